"""Agreement and rejection rates of the shapes checker on rendered scenes.

    python benchmarks/shapes_checker.py [--n 2000] [--seed 0]

For ``n`` rendered scenes (half ``test``, half ``heldout`` split) it prints the share of true
captions the checker accepts and, for each kind of corruption (``steer.zoo.shapes.world.mismatches``:
swapped relation, wrong colour, wrong shape, wrong count), the share of false captions it rejects,
on clean renders and on "degraded" renders imitating a small diffusion model's output (Gaussian
blur, pixel noise, dimmer colours; see ``steer.zoo.shapes.evaluate.degrade``).
"""
from __future__ import annotations

import argparse
import time

import torch

from steer.zoo.shapes import world
from steer.zoo.shapes.evaluate import checker_rates, degrade


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    a, ca = world.batch(args.n // 2, args.seed, "test", args.size)
    b, cb = world.batch(args.n - args.n // 2, args.seed, "heldout", args.size)
    images, captions = torch.cat([a, b]), ca + cb
    t1 = time.time()
    degraded = degrade(images, torch.Generator().manual_seed(args.seed))
    print(f"{args.n} scenes at {args.size}x{args.size} (render {t1 - t0:.1f} s)")
    for name, x in (("clean", images), ("degraded", degraded)):
        t = time.time()
        for key, (hits, total) in checker_rates(x, captions).items():
            print(f"  {name:9s} {key:18s} {hits / max(total, 1):7.2%}  ({hits}/{total})")
        print(f"  {name:9s} checker time {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
