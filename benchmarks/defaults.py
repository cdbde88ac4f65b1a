"""Do `steer finetune`'s defaults do something? Every method run through the CLI with nothing but its defaults.

Issue 28 item 5. Per method, one user command on the shipped shapes world (no ``--model``: the default model,
its 25-step chain and guidance; no ``--max-steps``, ``--lr`` or ``--preset``):

    python -m steer finetune --method M --reward R --prompts FILE --out DIR

with ``FILE`` the first ``--captions`` train-split relational captions (a small prompt file) and ``R`` the
style reward ``chroma`` by default (what a LoRA can carry in CPU minutes, see ``amortize_style.py``). The
stderr lines the CLI prints (updates per prompt, the warning below the measured need) are kept. Then each
LoRA is loaded into a fresh pipeline and compared with the base at 1x (deterministic DDIM, the same initial
noise, ``--seeds`` seeds per caption): the optimized reward, the exact checker's accuracy (the no-regression
column) and ``shapes-clip`` (a held-out reward), each as LoRA − base with a paired 95% bootstrap interval over
(caption, seed) samples. "Moves" = the reward's interval clear of zero.

Cached per method under ``--cache`` (``<method>/eval.json``, the CLI's folder ``<method>/run``); a cached
method is not rerun. Each CLI run gets ``OMP_NUM_THREADS=--threads``.

    python benchmarks/defaults.py [--methods draft,grpo,...] [--report-only]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from amortize import Cells, fingerprint, fresh_pipeline, train_captions  # noqa: E402  (run as a script: its folder
from shapes import bootstrap, steer_all  # noqa: E402                                 is on sys.path)

HERE = Path(__file__).resolve().parent
from steer.api import resolve_reward  # noqa: E402
from steer.finetune.lora import denoiser, load_lora  # noqa: E402
from steer.pipelines import from_pipe  # noqa: E402
from steer.zoo.shapes import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, checker, pipeline  # noqa: E402
from steer.zoo.shapes.reward import ShapesClipReward  # noqa: E402

METHODS = ("distill", "soar", "dpo", "kto", "draft", "grpo", "nft")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reward", default="chroma")
    p.add_argument("--captions", type=int, default=4)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=HERE / "defaults_cells")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def run_cli(method: str, args, cells: Cells, prompts_file: Path) -> dict:
    """The user's command with the method's defaults; its wall time and stderr."""
    out = cells.run_dir(method)
    cmd = [sys.executable, "-m", "steer", "finetune", "--method", method, "--reward", args.reward,
           "--prompts", str(prompts_file), "--out", str(out), "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{method}: the CLI failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the LoRA, config and metrics stay
    notes = [ln for ln in proc.stderr.splitlines() if "updates per prompt" in ln]
    return {"command": " ".join(cmd[1:]), "wall_seconds": wall, "cli_lines": notes,
            "stdout_last": proc.stdout.strip().splitlines()[-1:]}


def columns(process, reward, clip, captions, seeds) -> dict[str, torch.Tensor]:
    """(captions, seeds) columns at 1x from seed k's noise: the reward, checker pass, shapes-clip."""
    cols = {"reward": [], "correct": [], "clip": []}
    for seed in range(seeds):
        results, _, _ = steer_all(process, reward, captions, "best_of_n", {"n": 1}, seed, len(captions))
        images = torch.cat([r.images.float() for r in results])
        with torch.no_grad():
            cols["reward"].append(reward(images, captions).float())
            cols["correct"].append(checker.check(images, captions).float())
            cols["clip"].append(clip(images, captions).float())
    return {k: torch.stack(v, 1) for k, v in cols.items()}


def paired(base: torch.Tensor, lora: torch.Tensor) -> list[float]:
    """LoRA − base over (caption, seed) pairs: mean and 95% bootstrap interval."""
    d = (lora - base).reshape(-1, 1)
    return [float(d.mean()), *bootstrap(d[:, 0])]


def process_of(pipe):
    return from_pipe(pipe, num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS, guidance_scale=DEFAULT_GUIDANCE_SCALE)


def measure(args, methods, cells: Cells) -> None:
    captions = train_captions(args.captions)
    prompts_file = args.cache / "prompts.txt"
    prompts_file.write_text("\n".join(captions) + "\n")
    reward, clip = resolve_reward(args.reward), ShapesClipReward()
    base_pipe = pipeline()
    reference = fingerprint(denoiser(base_pipe))
    base = cells.get("base", "eval")
    if base is None:
        cols = columns(process_of(base_pipe), reward, clip, captions, args.seeds)
        cells.put("base", "eval", {k: v.tolist() for k, v in cols.items()})
        base = cells.get("base", "eval")
    for method in methods:
        if cells.get(method, "eval") is not None:
            continue
        run = run_cli(method, args, cells, prompts_file)
        pipe = fresh_pipeline(reference)
        load_lora(pipe, cells.run_dir(method) / "lora")
        cols = columns(process_of(pipe), reward, clip, captions, args.seeds)
        delta = {k: paired(torch.tensor(base[k]), v) for k, v in cols.items()}
        cells.put(method, "eval", {**run, **{k: v.tolist() for k, v in cols.items()}, "delta": delta})
        print(f"{method}: {run['wall_seconds']:.0f} s, reward Δ {delta['reward'][0]:+.4f}", file=sys.stderr, flush=True)


def report(cells: Cells, methods) -> str:
    base = cells.get("base", "eval")
    out = ["| method | CLI note | train wall (s) | reward base → LoRA | Δ reward [95% CI] | moves? "
           "| Δ checker acc. [95% CI] | Δ shapes-clip [95% CI] |", "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        c = cells.get(m, "eval")
        if c is None or base is None:
            continue
        r, a, s = c["delta"]["reward"], c["delta"]["correct"], c["delta"]["clip"]
        note = "; ".join(ln.replace("|", "/") for ln in c["cli_lines"])
        moves = "yes" if r[1] > 0 or r[2] < 0 else "no"
        b = torch.tensor(base["reward"]).mean()
        out.append(f"| {m} | {note} | {c['wall_seconds']:.0f} | {b:.4f} → {torch.tensor(c['reward']).mean():.4f} "
                   f"| {r[0]:+.4f} [{r[1]:+.4f}, {r[2]:+.4f}] | {moves} | {a[0]:+.1%} [{a[1]:+.1%}, {a[2]:+.1%}] "
                   f"| {s[0]:+.2f} [{s[1]:+.2f}, {s[2]:+.2f}] |")
    return "\n".join(out)


def main(argv=None) -> str:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cells = Cells(args.cache)
    cells.check_settings({"reward": args.reward, "captions": train_captions(args.captions), "seeds": args.seeds})
    if not args.report_only:
        measure(args, methods, cells)
    text = report(cells, methods)
    print(text)
    return text


if __name__ == "__main__":
    main()
