"""GRPO variants against plain GRPO at equal samples on the shapes world's style task (reward ``chroma``).

Every row trains a fresh LoRA (rank 8) of the shipped shapes pipeline on the same ``--captions``
train-split relational captions with the same optimizer, prompts per step (2), group size and steps,
so rows compare at equal samples drawn; the training chain is ``--train-steps`` DDIM steps at guidance 4
(a diffusion model: the flow-only kernels CPS / DanceGRPO's SDE are not in play, their variants keep
the rest of their recipe). Rows:

- ``grpo``: group advantages, η = 1 everywhere, a random half of the steps trained (as amortize_style's);
- ``fast``: Flow-GRPO-Fast's window, W = 3 stochastic (and trained) steps starting at random in
  0 .. S//2 − W, DDIM η = 0 elsewhere;
- ``mix``: MixGRPO's progressive window, W = 4, moved by 1 every ``--shift-every`` steps (the reference's
  25 is scaled so the window sweeps the chain within the run), shared group noise, unbiased std;
- ``guard``: ``grpo`` with GRPO-Guard's ratio (s·Δlog p + ‖Δμ‖²/2s);
- ``dance``: DanceGRPO's shared group noise, int(0.6·(S − 1)) random steps but the last, unbiased std;
- ``balance``: ``grpo`` with SAGE-GRPO's gradient norm equalizer (its SDE is flow-only: not in play).

Columns: training reward over the last quarter of steps (mean of the sampled groups' chroma), the
chroma and the exact checker's accuracy (the no-regression column: bigger objects must not break the
caption) of fresh deterministic samples (DDIM η = 0, ``--eval-steps``) on the training captions ×
``--seeds`` seeds before and after (paired: same noise), wall seconds. One run, one seed of training: differences
smaller than the seed-to-seed spread of a row are not evidence.

    python benchmarks/grpo_variants.py [--rows grpo,fast,mix,guard,dance] [--seed 0] [--out FILE]

Each row is one process of about 1–3 CPU minutes (one thread); run rows separately to keep side runs short.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _paths  # noqa: E402,F401  (this checkout's steer before an installed one)
from amortize import train_captions  # noqa: E402
sys.path.remove(str(HERE))

from steer import chain  # noqa: E402
from steer.finetune import GRPOConfig, grpo  # noqa: E402
from steer.pipelines import from_pipe  # noqa: E402
from steer.rewards.chroma import ChromaReward  # noqa: E402
from steer.zoo.shapes import DEFAULT_GUIDANCE_SCALE, checker, pipeline  # noqa: E402

ROWS = ("grpo", "fast", "mix", "guard", "dance", "balance")


def row_config(row: str, args) -> GRPOConfig:
    common = dict(lora_rank=8, lora_alpha=8.0, learning_rate=args.lr, group_size=args.group, prompts_per_step=2,
                  max_steps=args.steps, checkpoint_every=args.steps, keep_checkpoints=1, noise_level=1.0,
                  seed=args.seed)
    S = args.train_steps
    variant = {
        "grpo": dict(timestep_fraction=0.5),
        "fast": dict(sde_window_size=3, sde_window_range=(0, S // 2)),
        "mix": dict(sde_window_size=4, sde_window_schedule="progressive", window_shift_every=args.shift_every,
                    shared_noise=True, advantages="group_unbiased"),
        "guard": dict(timestep_fraction=0.5, ratio_norm=True),
        "dance": dict(timestep_fraction=0.6, timestep_selection="random_but_last", shared_noise=True,
                      advantages="group_unbiased"),
        "balance": dict(timestep_fraction=0.5, grad_balance=True),
    }[row]
    return GRPOConfig(**common, **variant)


@torch.no_grad()
def fresh_eval(process, captions, seeds) -> tuple[float, float]:
    """Mean chroma and checker accuracy of deterministic samples, every caption × seed from fixed noise
    (paired across rows)."""
    reward, chroma, correct = ChromaReward(), [], []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(10_000 + seed)
        x = chain.run(process, process.init_noise(len(captions), g), process.prepare(captions))
        images = process.decode(x).float()
        chroma.append(reward(images, captions))
        correct.append(checker.check(images, captions).float())
    return float(torch.cat(chroma).mean()), float(torch.cat(correct).mean())


def run_row(row: str, args, captions) -> dict:
    pipe = pipeline()
    evaluate = from_pipe(pipe, num_inference_steps=args.eval_steps, guidance_scale=DEFAULT_GUIDANCE_SCALE)
    before, acc_before = fresh_eval(evaluate, captions, args.seeds)
    config = row_config(row, args)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = grpo(from_pipe(pipe, num_inference_steps=args.train_steps, guidance_scale=DEFAULT_GUIDANCE_SCALE),
                      ChromaReward(), captions, config, out_dir=out)
    wall = time.perf_counter() - t0
    curve = [m["reward_mean"] for m in result.metrics]
    tail = curve[-max(1, len(curve) // 4):]
    after, acc_after = fresh_eval(evaluate, captions, args.seeds)
    return {"row": row, "seed": args.seed, "samples": args.steps * 2 * args.group, "wall_seconds": wall,
            "train_reward_last_quarter": sum(tail) / len(tail), "train_reward_first": curve[0],
            "fresh_before": before, "fresh_after": after, "accuracy_before": acc_before, "accuracy_after": acc_after,
            "curve": curve}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--captions", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--eval-steps", type=int, default=10)
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--shift-every", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    captions = train_captions(args.captions)
    rows = []
    for row in args.rows.split(","):
        rows.append(run_row(row, args, captions))
        r = rows[-1]
        print(f"{row:6s} samples {r['samples']:4d}  train reward first {r['train_reward_first']:.4f} "
              f"last-quarter {r['train_reward_last_quarter']:.4f}  fresh chroma {r['fresh_before']:.4f} -> "
              f"{r['fresh_after']:.4f}  checker {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}  "
              f"{r['wall_seconds']:.0f} s", flush=True)
        if args.out:
            args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
