"""The data ceiling of distillation on the shapes world: can any LoRA fine-tuning at these budgets move
the shipped pipeline's 1x accuracy on its training captions, if the teacher's samples were perfect?

Issue 18's goal 4 asks ``steer finetune --method distill --reward shapes-clip --prompts FILE
--max-steps 200`` (defaults otherwise) to raise 1x checker accuracy on ~50 relational captions by 15
points. FK's samples are what distillation fits; the best samples any teacher could give are exact
renders of the world (``world.scene_for``: every one satisfies its caption, and they cost nothing).
This script trains the distill trainer (``steer.finetune.distill.distill_step``, the same loss, LoRA
and optimizer as ``steer finetune --method distill``) on such renders instead of FK samples, with
the CLI's defaults and with 32x the data, 10x the learning rate, 5x the steps, a wider LoRA and the
x0-loss. If none of them moves accuracy, the teacher's samples are not what limits distillation here.

Setting (as goal 4's measurement in ``benchmarks/README.md``): the first 50 train-split relational
captions of ``benchmarks/amortize.py``'s order; 1x = the pipeline's 25 DDIM steps at guidance 4; 4
sampling seeds (seed k draws chunk s with seed k*10^6, as the base row); the paired difference per
caption (LoRA - base, same initial noise) with a 95% bootstrap interval over captions. One CPU thread.

    python benchmarks/distill_ceiling.py                    # every config, cache benchmarks/distill_ceiling_cells/
    python benchmarks/distill_ceiling.py --configs defaults,data32 --report-only
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amortize import train_captions  # noqa: E402
from shapes import bootstrap  # noqa: E402

from steer.finetune.config import DistillConfig  # noqa: E402
from steer.finetune.distill import distill_step  # noqa: E402
from steer.finetune.trainer import Trainer  # noqa: E402
from steer.pipelines import from_pipe  # noqa: E402
from steer.zoo.shapes import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, checker, pipeline, world  # noqa: E402
from steer.zoo.shapes.reward import ShapesClipReward  # noqa: E402

WIDE = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2")
CONFIGS = {  # name: (renders per caption, DistillConfig fields beyond the CLI's defaults)
    "defaults": (1, {}),
    "data32": (32, {}),
    "data32-lr1e-3": (32, {"learning_rate": 1e-3}),
    "data32-lr1e-3-1000": (32, {"learning_rate": 1e-3, "max_steps": 1000}),
    "data32-lr1e-3-10000": (32, {"learning_rate": 1e-3, "max_steps": 10000}),
    "data32-lr1e-3-1000-x0": (32, {"learning_rate": 1e-3, "max_steps": 1000, "loss_space": "x0"}),
    "wide-r16-1000": (32, {"learning_rate": 1e-3, "max_steps": 1000, "lora_rank": 16, "target_modules": WIDE}),
    "wide-r16-1000-x0": (32, {"learning_rate": 1e-3, "max_steps": 1000, "lora_rank": 16, "target_modules": WIDE,
                              "loss_space": "x0"}),
}
CLI_DEFAULTS = {"max_steps": 200}  # the goal's command line sets --max-steps 200; the rest are DistillConfig's


def accuracy(pipe, captions: list[str], seeds: int, chunk: int = 25) -> torch.Tensor:
    """Checker pass (captions, seeds) of the pipeline's plain 1x samples."""
    out = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(s * 1_000_000)
        images = torch.cat([pipe(captions[i:i + chunk], num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS,
                                 guidance_scale=DEFAULT_GUIDANCE_SCALE, generator=g, output_type="pt").images
                            for i in range(0, len(captions), chunk)])
        out.append(checker.check(images, captions).float())
    return torch.stack(out, 1)


def renders(pipe, captions: list[str], per_caption: int, seed: int = 12345) -> tuple[torch.Tensor, list[int]]:
    """``per_caption`` exact renders of every caption, encoded as the pipeline's latents, and their caption indices."""
    rng = np.random.default_rng(seed)
    images, owners = [], []
    for _ in range(per_caption):
        for i, c in enumerate(captions):
            images.append(world.render(world.scene_for(c, rng).objects))
            owners.append(i)
    with torch.no_grad():
        latents = pipe.vae.encode(torch.stack(images) * 2 - 1).latent_dist.mean * pipe.vae.config.scaling_factor
    return latents, owners


def paired(base: torch.Tensor, lora: torch.Tensor) -> tuple[float, float, float]:
    """Mean per-caption difference (LoRA - base) and its 95% bootstrap interval over captions."""
    d = (lora - base).mean(1)
    return (float(d.mean()), *bootstrap(d))


def train_on_renders(captions: list[str], per_caption: int, fields: dict, out_dir: Path):
    """A fresh shipped pipeline with a LoRA trained by the distill trainer on ``per_caption`` renders of
    every caption (the CLI's distill defaults, then ``fields``): (pipeline, config, seconds of training)."""
    pipe = pipeline()
    process = from_pipe(pipe, num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS, guidance_scale=DEFAULT_GUIDANCE_SCALE)
    latents, owners = renders(pipe, captions, per_caption)
    config = DistillConfig(**{**CLI_DEFAULTS, "checkpoint_every": 10 ** 6, **fields})
    trainer = Trainer(process, ShapesClipReward(), captions, config, out_dir, method="distill", overwrite=True)
    # the renders stand in for round 0's steered samples (distill_step draws only when this is absent)
    trainer.extra["distill_data"] = {"round": 0, "latents": latents, "idx": owners, "rewards": torch.zeros(len(owners))}
    t = time.perf_counter()
    trainer.run(distill_step)
    return pipe, config, time.perf_counter() - t


def run_config(name: str, captions: list[str], base: torch.Tensor, args, work: Path) -> dict:
    per_caption, fields = CONFIGS[name]
    pipe, config, train_s = train_on_renders(captions, per_caption, fields, work / name)
    lora = accuracy(pipe, captions, args.seeds)
    diff, lo, hi = paired(base, lora)
    return {"config": name, "renders_per_caption": per_caption, "fields": {k: list(v) if isinstance(v, tuple) else v
                                                                        for k, v in fields.items()},
            "base": float(base.mean()), "lora": float(lora.mean()), "diff": diff, "ci": [lo, hi],
            "train_seconds": train_s, "steps": config.max_steps}


def table(cells: list[dict]) -> str:
    lines = ["| config | renders / caption | changed from the CLI defaults | train (s) | base 1× | LoRA 1× | "
             "LoRA − base [95% CI] |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        changed = ", ".join(f"{k}={'wide' if k == 'target_modules' else v}" for k, v in c["fields"].items()) or "—"
        lines.append(f"| {c['config']} | {c['renders_per_caption']} | {changed} | {c['train_seconds']:.0f} | "
                     f"{c['base']:.1%} | {c['lora']:.1%} | {100 * c['diff']:+.1f} [{100 * c['ci'][0]:+.1f}, "
                     f"{100 * c['ci'][1]:+.1f}] |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, among {', '.join(CONFIGS)}")
    ap.add_argument("--captions", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--cache", type=Path, default=Path(__file__).resolve().parent / "distill_ceiling_cells")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose among {', '.join(CONFIGS)}")
    torch.set_num_threads(1)
    captions = train_captions(args.captions)
    args.cache.mkdir(parents=True, exist_ok=True)
    key = f"{args.captions}c-{args.seeds}s"
    base_file = args.cache / f"base-{key}.pt"
    cells = []
    for name in names:
        path = args.cache / f"{name}-{key}.json"
        if not path.exists() and not args.report_only:
            if not base_file.exists():
                torch.save(accuracy(pipeline(), captions, args.seeds), base_file.with_suffix(".tmp"))
                os.replace(base_file.with_suffix(".tmp"), base_file)
            base = torch.load(base_file, weights_only=True)
            cell = run_config(name, captions, base, args, args.cache / "runs")
            path.with_suffix(".tmp").write_text(json.dumps(cell, indent=1))
            os.replace(path.with_suffix(".tmp"), path)
            print(json.dumps(cell), flush=True)
        if path.exists():
            cells.append(json.loads(path.read_text()))
    print(table(cells))
    return cells


if __name__ == "__main__":
    main()
