"""TV distance to the exact reward-tilted target vs particles, on the GMM harness (both schedules).

FK steering with each potential (systematic resampling at every scheduled step, late in the chain)
and the best-of-N baseline (n = 1, 4, 16, 64; 2000 selected samples, one prompt each) against the
same tilted target: it does not converge to it (it tends to the reward's argmax instead).
Reward r(x) = x + y, λ = 0.5, 20×20 bins on [−4, 4]², TV averaged over ``--seeds`` runs.

    python benchmarks/exactness.py [--seeds 3] [--particles 250 1000 2000 8000]
"""
from __future__ import annotations

import argparse

import torch

from steer.samplers import best_of_n, fk
from steer.zoo.gmm import GMMProcess, PointReward, tilted_target, tv_distance

BINS, LAM = 20, 0.5
BON_N = (1, 4, 16, 64)
CONFIG = {"diffusion": (50, dict(t_start=36, every=8, t_end=44)), "flow": (50, dict(t_start=30, every=10, t_end=40))}


def weighted_histogram(points, weights, lim=4.0, bins=BINS):
    idx = ((points.float() + lim) / (2 * lim) * bins).floor().long()  # (N, 2)
    inside = ((idx >= 0) & (idx < bins)).all(1)
    flat = idx[inside, 0] * bins + idx[inside, 1]
    return torch.zeros(bins * bins).index_add_(0, flat, weights[inside].float()).reshape(bins, bins)


def fk_tv(proc, reward, target, sched, K, potential, seed):
    out = fk(proc, reward, ["p"], generator=torch.Generator().manual_seed(seed), particles=K, lam=LAM,
             potential=potential, ess_threshold=1.0, **sched)
    return tv_distance(weighted_histogram(out.candidates[0, :, :2, 0, 0], out.log_weights[0].exp()), target)


def bon_tv(proc, reward, target, K, seed, samples=2000):
    out = best_of_n(proc, reward, ["p"] * samples, generator=torch.Generator().manual_seed(seed), n=K)
    return tv_distance(weighted_histogram(out.latents, torch.full((samples,), 1.0 / samples)), target)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--particles", type=int, nargs="+", default=[250, 1000, 2000, 8000])
    args = ap.parse_args()
    torch.set_num_threads(1)
    reward = PointReward(lambda p: p.sum(-1), name="linear")
    print(f"| schedule | method | " + " | ".join(f"K={k}" for k in args.particles) + " |")
    print("|---|---|" + "---|" * len(args.particles))
    for kind, (S, sched) in CONFIG.items():
        proc = GMMProcess(kind=kind, num_inference_steps=S)
        target = tilted_target(proc.mixture, reward.fn, LAM, bins=BINS)
        for potential in ("max", "difference", "sum", "immediate"):
            tvs = [sum(fk_tv(proc, reward, target, sched, K, potential, s) for s in range(args.seeds)) / args.seeds
                   for K in args.particles]
            print(f"| {kind} | fk {potential} | " + " | ".join(f"{v:.3f}" for v in tvs) + " |")
    print("\nbest-of-N (2000 selected samples, one per prompt) vs the same tilted target:")
    print("| schedule | " + " | ".join(f"n={n}" for n in BON_N) + " |")
    print("|---|" + "---|" * len(BON_N))
    for kind, (S, _) in CONFIG.items():
        proc = GMMProcess(kind=kind, num_inference_steps=S)
        target = tilted_target(proc.mixture, reward.fn, LAM, bins=BINS)
        tvs = [sum(bon_tv(proc, reward, target, n, s) for s in range(args.seeds)) / args.seeds for n in BON_N]
        print(f"| {kind} | " + " | ".join(f"{v:.3f}" for v in tvs) + " |")


if __name__ == "__main__":
    main()
