"""Does the OT reward (``shapes-ot``, PISCES-style) predict the exact checker better than ``shapes-clip``?

K plain samples (DDIM η = 0, the shipped 25 steps, guidance 4) per held-out relational caption; every
image is scored by each reward (a caption's K images scored as one batch, so the distributional term
couples them with their K identical captions) and by the exact checker. Reported per reward:

- within-caption AUC: over every (pass, fail) pair of images of the same caption, the fraction the
  reward orders correctly (ties count ½): what selection among a prompt's candidates depends on;
- best-of-4 accuracy: the checker's pass rate of the reward's argmax over each disjoint group of 4
  samples of a caption, beside the mean pass rate (random choice) and the oracle (any of the 4 passes).

Rows: ``shapes-clip``; ``shapes-ot`` (semantic + distributional term); ``shapes-ot`` semantic only
(``distribution_weight=0``: the token-level partial OT alone).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/ot_reward.py [--captions 32] [--samples 8] [--seed 0]
        [--images FILE.safetensors]   (the samples are kept there and reused when the file exists)
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from steer import chain
from steer.pipelines import from_pipe
from steer.zoo.shapes import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, checker, pipeline
from steer.zoo.shapes.evaluate import relational_heldout_captions
from steer.zoo.shapes.reward import ShapesClipReward, shapes_ot


def within_caption_auc(scores: torch.Tensor, passed: torch.Tensor) -> float:
    """scores, passed: (C, K). Fraction of same-caption (pass, fail) pairs ordered correctly (ties ½)."""
    good = bad = 0.0
    for s, p in zip(scores, passed):
        pos, neg = s[p], s[~p]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            good += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            bad += diff.numel()
    return good / max(bad, 1)


def best_of(scores: torch.Tensor, passed: torch.Tensor, n: int = 4) -> tuple[float, float, float]:
    """(reward's pick, random, oracle) pass rates over disjoint groups of ``n`` samples per caption."""
    C, K = scores.shape
    s, p = scores[:, :K // n * n].reshape(C, -1, n), passed[:, :K // n * n].reshape(C, -1, n).float()
    pick = p.gather(2, s.argmax(2, keepdim=True)).mean()
    return float(pick), float(p.mean()), float(p.max(2).values.mean())


@torch.no_grad()
def sample(captions: list[str], k: int, seed: int) -> torch.Tensor:
    process = from_pipe(pipeline(), num_inference_steps=DEFAULT_NUM_INFERENCE_STEPS,
                        guidance_scale=DEFAULT_GUIDANCE_SCALE)
    cond = process.prepare(captions).repeat(k)
    x = process.init_noise(len(captions) * k, torch.Generator().manual_seed(seed))
    return process.decode(chain.run(process, x, cond)).float().clamp(0, 1)  # (C·K, 3, H, W), caption-major


def _cached(path, make) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    if path and os.path.exists(path):
        return load_file(path)["images"]
    images = make()
    if path:
        save_file({"images": images.contiguous()}, path + ".tmp")
        os.replace(path + ".tmp", path)  # atomic
    return images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", default=None, help="a .safetensors file to keep the samples in and reuse")
    args = ap.parse_args()
    torch.set_num_threads(1)
    captions, K = relational_heldout_captions(args.captions), args.samples
    t = time.perf_counter()
    images = _cached(args.images, lambda: sample(captions, K, args.seed))
    names = [c for c in captions for _ in range(K)]
    passed = checker.check(images, names).view(len(captions), K)
    print(f"{len(captions)} held-out relational captions x {K} samples in {time.perf_counter() - t:.0f} s; "
          f"checker pass rate {float(passed.float().mean()):.3f}")
    rewards = {"shapes-clip": ShapesClipReward(), "shapes-ot": shapes_ot(),
               "shapes-ot semantic only": shapes_ot(distribution_weight=0.0)}
    print(f"{'reward':26s} {'AUC':>6s} {'best-of-4':>10s} {'random':>7s} {'oracle':>7s} {'s/img':>7s}")
    for name, reward in rewards.items():
        t = time.perf_counter()
        with torch.no_grad():
            scores = torch.cat([reward(images[c * K:(c + 1) * K], names[c * K:(c + 1) * K])
                                for c in range(len(captions))]).view(len(captions), K)
        per = (time.perf_counter() - t) / images.shape[0]
        pick, rnd, orc = best_of(scores, passed)
        print(f"{name:26s} {within_caption_auc(scores, passed):6.3f} {pick:10.3f} {rnd:7.3f} {orc:7.3f} {per:7.4f}")


if __name__ == "__main__":
    main()
