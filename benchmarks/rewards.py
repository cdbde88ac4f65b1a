"""Reward cost on the tiny configs: forward and forward+backward time per image, as ratios to a plain
CLIP forward (the tiny transformers CLIP's image+text features, no reward wrapper) measured in the
same run. Usage: python benchmarks/rewards.py [--batch 4] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

import _paths  # noqa: F401,E402  (repository root on sys.path: the fixtures live in tests/)

PROMPT = "a red circle above a blue square"


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def plain_clip_forward(batch: int, repeats: int) -> float:
    """Seconds per image of a bare CLIP forward (224-px pixels already prepared, no reward)."""
    from tests.fixtures.rewards import tiny_transformers_clip

    model, tok = tiny_transformers_clip()
    pixels = torch.rand(batch, 3, 224, 224)
    enc = tok([PROMPT] * batch, padding="max_length", max_length=77, return_tensors="pt")

    def run():
        with torch.no_grad():
            model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=pixels)
    return best_time(run, repeats) / batch


def reward_times(reward, batch: int, repeats: int, size: int) -> tuple[float, float | None]:
    images = torch.rand(batch, 3, size, size)
    prompts = [PROMPT] * batch

    def forward():
        with torch.no_grad():
            reward(images, prompts)

    def backward():
        x = images.clone().requires_grad_(True)
        reward(x, prompts).sum().backward()
    fwd = best_time(forward, repeats) / batch
    bwd = best_time(backward, repeats) / batch if reward.differentiable else None
    return fwd, bwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=256, help="input image side (resized to 224 inside)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from tests.fixtures.rewards import tiny_rewards

    with tempfile.TemporaryDirectory() as work:
        rewards = tiny_rewards(work)
        base = plain_clip_forward(args.batch, args.repeats)
        rows = [(name, *reward_times(reward, args.batch, args.repeats, args.size)) for name, reward in rewards.items()]
        base = min(base, plain_clip_forward(args.batch, args.repeats))  # measured before and after: best of both
        print(f"plain tiny CLIP forward: {base * 1e3:.2f} ms/image (batch {args.batch}, {args.threads} threads)")
        print(f"{'reward':<14}{'forward':>10}{'fwd+bwd':>10}   (ratio to plain CLIP forward)")
        for name, fwd, bwd in rows:
            bwd_text = f"{bwd / base:>10.2f}" if bwd is not None else f"{'n/a':>10}"
            print(f"{name:<14}{fwd / base:>10.2f}{bwd_text}")


if __name__ == "__main__":
    main()
