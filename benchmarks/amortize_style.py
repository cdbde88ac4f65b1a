"""Amortization of a style on the shapes world: how much of FK-8's gain in ``chroma`` a LoRA keeps at 1x NFE.

The style task (issue 28): the reward is ``chroma`` (``steer.rewards.chroma``: mean per-pixel
max(RGB) − min(RGB)). On the shapes world (coloured shapes on black) it measures painted area — object
size — exactly, is differentiable, and is the same for every caption, so a LoRA can carry it as one
global change and it should generalize to captions never trained on; it was chosen over an aesthetic-
like learned reward because it is exact to measure (no second model to hack). The exact checker's
accuracy is the no-regression column (bigger objects must not break the relation or add objects);
``shapes-clip`` is the held-out reward beside the optimized one.

Rows (evaluation from the same initial noise for every row: paired): ``base`` — the shipped pipeline at
1x (``--steps`` DDIM steps, guidance 4, η = 0); ``fk`` — FK with ``--particles`` particles steered by
``chroma`` (the teacher, K x NFE); trained rows, each a fresh pipeline + LoRA trained on the
``--train-captions`` train-split relational captions with ``chroma`` and evaluated at 1x with the
plain deterministic sampler:

- ``nft`` — DiffusionNFT (``steer.finetune.nft``): samples from v_old with the ODE of a
  ``--train-steps``-step chain (the reference trains on a 10-step chain and evaluates at 40);
- ``nft-early`` — the same NFT run stopped after ``--nft-early-steps`` (default 10) steps;
- ``grpo`` — DDPO (GRPO on DDIM η = 1) on the same ``--train-steps``-step chain, the same prompts and
  group size per step, so rewards-vs-samples curves compare at equal samples;
- ``distill`` — FK samples (``--particles``) distilled with the x̂0-space loss (RAFT-style);
- ``soar`` — the distill row's FK samples, fitted with SOAR's self-correction (``--soar-aux`` states);
- ``draft`` — DRaFT-1 (reward backprop through the last step) on the 25-step chain;
- ``alignprop`` — AlignProp (randomized truncation, η = 1) on the 25-step chain;
- ``dpo`` — Diffusion-DPO on FK-8 samples against the base model's, labelled by chroma (x̂0 errors, β 500);
- ``kto`` — Diffusion-KTO on FK-8 samples, desirable above ``--kto-threshold`` chroma.

Evaluation sets, ``--seeds`` seeds each: the training captions and the first ``--heldout`` of the 104
held-out relational captions. Per set: mean chroma with a 95% interval (bootstrap over captions, each
caption averaged over seeds), the share of the teacher's chroma gain kept ((LoRA − base) / (FK −
base), paired bootstrap), checker accuracy (interval), mean ``shapes-clip``. Training columns: wall
time, s/step, samples drawn (images generated in training, steering particles included), NFE, peak
RSS growth. ``training.json`` of each row keeps the per-step reward curve (reward vs samples drawn);
``--plot PATH`` draws it.

Every cell is cached under ``--cache`` (default ``benchmarks/amortize_style_cells``) as it finishes, so
an interrupted run resumes; a LoRA whose row is cached is reloaded. Runs on one torch thread
(``--threads``) so it can share the 2-core machine.

    python benchmarks/amortize_style.py [--rows base,fk,nft,grpo,distill,draft] [--report-only] [--plot out.png]

The relational side run (issue 28's third goal, NFT on the exact checker): ``--reward shapes-check
--teacher-reward shapes-clip --metric correct --train-captions 8 --heldout 8 --cache
benchmarks/amortize_relational_cells``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
_ADDED = str(HERE) not in sys.path
if _ADDED:
    sys.path.insert(0, str(HERE))
try:
    from amortize import Cells, PeakRSS, fingerprint, fresh_pipeline, lora_b_norm, share, train_captions  # noqa: E402
    from shapes import bootstrap, steer_all  # noqa: E402
finally:
    if _ADDED:
        sys.path.remove(str(HERE))
from steer.finetune import DistillConfig, DPOConfig, DraftConfig, GRPOConfig, KTOConfig, NFTConfig, SoarConfig  # noqa: E402
from steer.finetune import D3POConfig, InPOConfig, MaPOConfig, PRDPConfig, SPOConfig  # noqa: E402
from steer.finetune import d3po, distill, dpo, draft, grpo, inpo, kto, mapo, nft, prdp, soar, spo  # noqa: E402
from steer.finetune.lora import denoiser, load_lora  # noqa: E402
from steer.pipelines import from_pipe  # noqa: E402
from steer.rewards.chroma import ChromaReward  # noqa: E402
from steer.zoo.shapes import DEFAULT_GUIDANCE_SCALE, checker, pipeline  # noqa: E402
from steer.zoo.shapes.evaluate import relational_heldout_captions  # noqa: E402
from steer.zoo.shapes.reward import ShapesCheckReward, ShapesClipReward  # noqa: E402

ROWS = ("base", "fk", "nft", "nft-early", "grpo", "distill", "soar", "draft", "alignprop", "dpo", "kto", "mapo", "inpo",
        "d3po", "prdp", "spo")
ONLINE = ("nft", "nft-early", "grpo", "draft", "alignprop", "d3po", "prdp", "spo")  # rows that draw new samples every step


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--train-captions", type=int, default=16)
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=25, help="evaluation chain steps")
    p.add_argument("--train-steps", type=int, default=10, help="chain steps of nft / grpo sampling")
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--nft-steps", type=int, default=100)
    p.add_argument("--nft-lr", type=float, default=3e-3)
    p.add_argument("--nft-fraction", type=float, default=0.5)
    p.add_argument("--nft-early-steps", type=int, default=10)
    p.add_argument("--grpo-steps", type=int, default=100)
    p.add_argument("--grpo-lr", type=float, default=3e-3)
    p.add_argument("--grpo-fraction", type=float, default=0.5)
    p.add_argument("--distill-steps", type=int, default=150)
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--draft-steps", type=int, default=60)
    p.add_argument("--draft-lr", type=float, default=1e-3)
    p.add_argument("--soar-aux", type=int, default=2)
    p.add_argument("--alignprop-steps", type=int, default=60)
    p.add_argument("--alignprop-lr", type=float, default=1e-3)
    p.add_argument("--pref-steps", type=int, default=100)
    p.add_argument("--pref-lr", type=float, default=1e-3)
    p.add_argument("--kto-threshold", type=float, default=0.15, help="kto: a sample is desirable above this chroma")
    p.add_argument("--online-pref-steps", type=int, default=60, help="d3po / prdp / spo optimizer steps")
    p.add_argument("--online-pref-lr", type=float, default=3e-4, help="d3po / prdp / spo learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward", default="chroma", choices=("chroma", "shapes-check", "shapes-clip"),
                   help="the training reward (and the teacher's unless --teacher-reward)")
    p.add_argument("--teacher-reward", default=None, choices=(None, "chroma", "shapes-check", "shapes-clip"))
    p.add_argument("--metric", default="chroma", choices=("chroma", "correct"),
                   help="what the share of the teacher's gain is taken on (correct: checker accuracy)")
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=HERE / "amortize_style_cells")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--plot", type=Path, default=None)
    return p.parse_args(argv)


def sets(args) -> dict[str, list[str]]:
    return {"train": train_captions(args.train_captions), "heldout": relational_heldout_captions(args.heldout)}


def train_setup(row: str, args):
    """(method function, config, chain steps of training) of a trained row."""
    common = dict(lora_rank=args.rank, lora_alpha=float(args.rank), seed=args.seed, keep_checkpoints=1,
                  prompts_per_step=args.prompts_per_step)
    if row == "nft":
        return nft, NFTConfig(group_size=args.group, max_steps=args.nft_steps, learning_rate=args.nft_lr,
                              timestep_fraction=args.nft_fraction, kl_beta=0.0, guided=True,
                              checkpoint_every=args.nft_steps, **common), args.train_steps
    if row == "nft-early":  # the same run stopped early: the curve shows the gain arrives in the first steps
        fn, config, steps = train_setup("nft", args)
        return fn, replace(config, max_steps=args.nft_early_steps, checkpoint_every=args.nft_early_steps), steps
    if row == "grpo":
        return grpo, GRPOConfig(group_size=args.group, max_steps=args.grpo_steps, learning_rate=args.grpo_lr,
                                timestep_fraction=args.grpo_fraction, noise_level=1.0,
                                checkpoint_every=args.grpo_steps, **common), args.train_steps
    if row == "distill":
        return distill, DistillConfig(steer_method="fk", steer_options={"particles": args.particles},
                                      samples_per_prompt=2, max_steps=args.distill_steps, learning_rate=args.distill_lr,
                                      loss_space="x0", guided=True, checkpoint_every=args.distill_steps,
                                      **{**common, "prompts_per_step": 8}), args.steps
    if row == "soar":  # the distill row's data and loss space, plus SOAR's self-correction states
        _, config, steps = train_setup("distill", args)
        fields = {k: v for k, v in config.to_dict().items() if k not in ("method", "steps_per_round")}
        return soar, SoarConfig(**fields, aux_points=args.soar_aux), steps
    if row == "alignprop":
        return draft, DraftConfig(variant="alignprop", noise_level=1.0, max_steps=args.alignprop_steps,
                                  learning_rate=args.alignprop_lr, gradient_checkpointing=False,
                                  checkpoint_every=args.alignprop_steps, **{**common, "prompts_per_step": 4}), args.steps
    if row in ("dpo", "kto"):  # FK-8 samples (the distill row's budget) against base samples / judged by a threshold
        shared = dict(steer_method="fk", steer_options={"particles": args.particles}, samples_per_prompt=2,
                      loss_space="x0", guided=True, train_batch_size=4, **{**common, "prompts_per_step": 8})
        if row == "dpo":
            return dpo, DPOConfig(source="steering", loser="base", max_steps=args.pref_steps, learning_rate=args.pref_lr,
                                  beta=500.0, checkpoint_every=args.pref_steps, **shared), args.steps
        return kto, KTOConfig(source="verifier", threshold=args.kto_threshold, max_steps=args.pref_steps,
                              learning_rate=args.pref_lr, beta=500.0, checkpoint_every=args.pref_steps, **shared), args.steps
    if row in ("mapo", "inpo"):  # the dpo row's FK-8-vs-base pairs, loss space, steps and learning rate
        shared = dict(steer_method="fk", steer_options={"particles": args.particles}, samples_per_prompt=2,
                      loss_space="x0", guided=True, train_batch_size=4, max_steps=args.pref_steps,
                      learning_rate=args.pref_lr, checkpoint_every=args.pref_steps, **{**common, "prompts_per_step": 8})
        if row == "mapo":
            return mapo, MaPOConfig(source="steering", loser="base", **shared), args.steps
        return inpo, InPOConfig(source="steering", loser="base", beta=500.0, **shared), args.steps
    if row in ("d3po", "prdp", "spo"):  # online, on the nft / grpo rows' chain and sample budget
        online = dict(max_steps=args.online_pref_steps, learning_rate=args.online_pref_lr,
                      checkpoint_every=args.online_pref_steps, **common)
        if row == "d3po":  # 2 trajectories per prompt: 8 prompts x 2 = 16 samples per step
            return d3po, D3POConfig(**{**online, "prompts_per_step": 8}), args.train_steps
        if row == "prdp":  # chroma differences are ~0.01: beta 0.01 makes the regressed log-ratios ~1
            return prdp, PRDPConfig(group_size=args.group, beta=0.01, **online), args.train_steps
        return spo, SPOConfig(threshold=0.0, **{**online, "prompts_per_step": 4}), args.train_steps  # chroma scale
    if row == "draft":
        return draft, DraftConfig(variant="draft", k=1, max_steps=args.draft_steps, learning_rate=args.draft_lr,
                                  checkpoint_every=args.draft_steps, **{**common, "prompts_per_step": 4}), args.steps
    raise ValueError(row)


def training_reward(args, clip, name=None):
    """The reward named ``name`` (default ``--reward``): chroma, the exact checker or the shapes CLIP."""
    name = name or args.reward
    return {"chroma": ChromaReward, "shapes-check": ShapesCheckReward, "shapes-clip": lambda: clip}[name]()


def process_of(pipe, steps: int):
    return from_pipe(pipe, num_inference_steps=steps, guidance_scale=DEFAULT_GUIDANCE_SCALE)


def evaluate(process, row, method, options, args, cells, clip, steer_reward=None) -> None:
    """Missing evaluation cells of ``row``: chroma, checker and shapes-clip per caption over the seeds
    (``steer_reward``: what a steering method is steered by; default the training reward)."""
    chroma = ChromaReward()
    steer_reward = steer_reward or training_reward(args, clip)
    for name, caps in sets(args).items():
        if cells.get(row, name):
            continue
        cols = {"chroma": [], "correct": [], "clip": []}
        t0, nfe = time.perf_counter(), 0.0
        for seed in range(args.seeds):
            results, n, _ = steer_all(process, steer_reward, caps, method, options, seed, args.chunk)
            images = torch.cat([r.images.float() for r in results])
            nfe += n / args.seeds
            with torch.no_grad():
                cols["chroma"].append(chroma(images, caps))
                cols["correct"].append(checker.check(images, caps).float())
                cols["clip"].append(clip(images, caps).float())
        per = {k: torch.stack(v, 1).mean(1) for k, v in cols.items()}  # per caption (N,)
        cells.put(row, name, {"method": method, "options": options, "nfe": nfe, "seconds": time.perf_counter() - t0,
                              **{f"{k}_per_caption": v.tolist() for k, v in per.items()},
                              **{f"{k}_mean": float(v.mean()) for k, v in per.items()},
                              **{f"{k}_ci": list(bootstrap(v)) for k, v in per.items()}})


def train_row(row, args, reference, cells, clip):
    """Train (or reload) the row's LoRA on a fresh pipeline; returns the evaluation process."""
    fn, config, steps = train_setup(row, args)
    pipe = fresh_pipeline(reference)
    lora_dir = cells.run_dir(row) / "lora"
    if cells.get(row, "training") is not None and lora_dir.is_dir():
        load_lora(pipe, lora_dir)
        return process_of(pipe, args.steps)
    captions = sets(args)["train"]
    clip_before = fingerprint(clip.model)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        result = fn(process_of(pipe, steps), training_reward(args, clip), captions, config, out_dir=cells.run_dir(row),
                    overwrite=True, eval_reward=clip)
    wall = time.perf_counter() - t0
    if fingerprint(clip.model) != clip_before:
        raise RuntimeError(f"training {row} changed the reward CLIP's weights")
    shutil.rmtree(cells.run_dir(row) / "checkpoints", ignore_errors=True)
    m = result.metrics
    per_step = samples_per_step(row, config, len(captions))
    cells.put(row, "training", {
        "config": config.to_dict(), "train_chain_steps": steps, "steps": len(m), "wall_seconds": wall,
        "seconds_per_step": sum(r["seconds"] for r in m) / len(m), "nfe": m[-1]["nfe"],
        "samples": per_step * len(m) if row in ONLINE else per_step,
        "curve": [[per_step * (k + 1) if row in ONLINE else per_step, r["reward_mean"]]
                  for k, r in enumerate(m)],
        "lora_b_norm": lora_b_norm(pipe), "threads": torch.get_num_threads(), **mem.report()})
    return process_of(pipe, args.steps)


def samples_per_step(row, config, n_captions: int) -> int:
    """Images generated per optimizer step (nft / grpo / draft) or in all (distill: particles included)."""
    if row in ("nft", "nft-early", "grpo"):
        return config.prompts_per_step * config.group_size
    if row in ("draft", "alignprop", "spo"):  # spo: trajectories (each step also draws k candidates)
        return config.prompts_per_step
    if row == "d3po":
        return 2 * config.prompts_per_step
    if row == "prdp":
        return config.prompts_per_step * config.group_size
    steered = n_captions * config.samples_per_prompt * config.steer_options["particles"]
    return steered + (n_captions * config.samples_per_prompt if row in ("dpo", "mapo", "inpo") else 0)  # + base losers


# ---- report ---------------------------------------------------------------------------------------
def fmt(cell, key, pct=False) -> str:
    if cell is None:
        return "—"
    m, (lo, hi) = cell[f"{key}_mean"], cell[f"{key}_ci"]
    return f"{m:.1%} [{lo:.1%}, {hi:.1%}]" if pct else f"{m:.4f} [{lo:.4f}, {hi:.4f}]"


def kept(cells, row, name, metric: str = "chroma") -> str:
    base, teacher, lora = (cells.get(r, name) for r in ("base", "fk", row))
    if not (base and teacher and lora):
        return "—"
    point, ci = share(*(c[f"{metric}_per_caption"] for c in (base, teacher, lora)))
    if point is None:
        return "—"
    return f"{point:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else " (teacher gain not clear)")


def tables(cells, rows, metric: str = "chroma") -> str:
    out = [f"| row | set | chroma [95% CI] | share of FK's {metric} gain kept [95% CI] | checker acc. [95% CI] "
           f"| shapes-clip |",
           "|---|---|---|---|---|---|"]
    for row in rows:
        for name in ("train", "heldout"):
            c = cells.get(row, name)
            out.append(f"| {row} | {name} | {fmt(c, 'chroma')} | {kept(cells, row, name, metric) if row not in ('base', 'fk') else '—'} "
                       f"| {fmt(c, 'correct', pct=True)} | {'—' if c is None else format(c['clip_mean'], '.2f')} |")
    out += ["", "| row | steps | wall (s) | s/step | samples drawn | NFE | peak RSS growth (MiB) | reward first → last |",
            "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t = cells.get(row, "training")
        if t is None:
            continue
        curve = t["curve"]
        k = max(1, len(curve) // 10)
        first = sum(r for _, r in curve[:k]) / k
        last = sum(r for _, r in curve[-k:]) / k
        out.append(f"| {row} | {t['steps']} | {t['wall_seconds']:.0f} | {t['seconds_per_step']:.1f} | {t['samples']} "
                   f"| {t['nfe']:.0f} | {t['peak_rss_growth_mib']:.0f} | {first:.4f} → {last:.4f} |")
    return "\n".join(out)


def plot(cells, rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        t = cells.get(row, "training")
        if t is None or row not in ONLINE:  # fixed-data rows have no curve
            continue
        xs, ys = zip(*t["curve"])
        k = max(1, len(ys) // 10)
        smooth = [sum(ys[max(0, j - k + 1):j + 1]) / len(ys[max(0, j - k + 1):j + 1]) for j in range(len(ys))]
        ax.plot(xs, smooth, label=row)
    ax.set_xlabel("samples drawn in training")
    ax.set_ylabel("chroma of the step's samples (running mean)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> str:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    cells = Cells(args.cache)
    wanted = {"steps": args.steps, "seeds": args.seeds, "particles": args.particles, "sets": sets(args)}
    if args.reward != "chroma" or args.teacher_reward:  # the style run's settings.json predates these keys
        wanted.update(reward=args.reward, teacher_reward=args.teacher_reward)
    cells.check_settings(wanted)
    if not args.report_only:
        clip = ShapesClipReward()
        base_pipe = pipeline()
        reference = fingerprint(denoiser(base_pipe))
        for row in rows:
            t0 = time.perf_counter()
            if row == "base":
                evaluate(process_of(base_pipe, args.steps), row, "best_of_n", {"n": 1}, args, cells, clip)
            elif row == "fk":
                evaluate(process_of(base_pipe, args.steps), row, "fk", {"particles": args.particles}, args, cells, clip,
                         training_reward(args, clip, args.teacher_reward))
            else:
                process = train_row(row, args, reference, cells, clip)
                evaluate(process, row, "best_of_n", {"n": 1}, args, cells, clip)
            print(f"{row}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    report = tables(cells, rows, args.metric)
    print(report)
    if args.plot:
        plot(cells, rows, args.plot)
    return report


if __name__ == "__main__":
    main()
