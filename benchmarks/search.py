"""Best reward reached vs NFE on the exact-target harness: best-of-N, FK, DTS*, beam, zero-order.

For each NFE budget per prompt (S = 20 steps), every method runs on P independent prompts of the
2-D Gaussian mixture with r(x) = −‖x − (1.5, 1.5)‖² (maximum 0, the lightest mode); the table
holds the mean over prompts of the best reward each returned. The last column is the ratio of
NFE each method needs (log-linear interpolation on the grid) to reach best-of-N's mean best reward
at the largest budget; < 1 means fewer NFE than best-of-N.

    python benchmarks/search.py [--prompts 32] [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from steer.budget import Budget
from steer.search import beam, dts_star, zero_order
from steer.zoo.gmm import GMMProcess, quadratic_reward

S = 20
BUDGETS = (160, 320, 640, 1280, 2560)


def _methods():
    out = {}
    try:
        from steer.samplers.best_of_n import best_of_n

        out["best-of-N"] = lambda p, r, pr, g, nfe: best_of_n(p, r, pr, generator=g, n=nfe // S)
    except ImportError as e:  # the samplers package is written concurrently
        print(f"(best-of-N unavailable: {e})")
    try:
        from steer.samplers.fk import fk

        out["FK (K=N/S, λ=10)"] = lambda p, r, pr, g, nfe: fk(p, r, pr, generator=g, particles=nfe // S)
    except ImportError as e:
        print(f"(FK unavailable: {e})")
    out["DTS* (C=2, α=0.8)"] = lambda p, r, pr, g, nfe: dts_star(p, r, pr, generator=g, budget=Budget(nfe=nfe))
    out["DTS* (C=1, α=0.5, every 5)"] = lambda p, r, pr, g, nfe: dts_star(
        p, r, pr, generator=g, budget=Budget(nfe=nfe), widen_c=1.0, widen_alpha=0.5, branch_every=5)
    out["beam (B=2, M=N/2S)"] = lambda p, r, pr, g, nfe: beam(p, r, pr, generator=g, beam_width=2,
                                                              candidates=max(nfe // (2 * S), 1))
    out["zero-order (N=4, ρ=0.95)"] = lambda p, r, pr, g, nfe: zero_order(p, r, pr, generator=g, iterations=None,
                                                                         budget=Budget(nfe=nfe))
    return out


def nfe_to_reach(curve: dict[int, float], target: float) -> float:
    """Smallest NFE (log-linear interpolation) where the curve reaches ``target``; inf if never."""
    pts = sorted(curve.items())
    if pts[0][1] >= target:
        return float(pts[0][0])
    for (n0, r0), (n1, r1) in zip(pts, pts[1:]):
        if r1 >= target > r0:
            f = (target - r0) / (r1 - r0)
            return math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0)))
    return math.inf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    reward = quadratic_reward()
    prompts = [f"problem {k}" for k in range(args.prompts)]
    for kind in ("diffusion", "flow"):
        proc = GMMProcess(kind=kind, num_inference_steps=S)
        curves, nfes = {}, {}
        for name, run in _methods().items():
            curves[name], used = {}, []
            for b in BUDGETS:
                res = run(proc, reward, prompts, torch.Generator().manual_seed(args.seed), b)
                curves[name][b] = float(res.rewards.mean())
                used.append(res.trace.nfe_per_prompt)
            nfes[name] = used
        ref = curves.get("best-of-N", {}).get(BUDGETS[-1])
        print(f"\n{kind} schedule, S={S}, {args.prompts} prompts; mean best reward at NFE/prompt budget")
        print("| method | " + " | ".join(str(b) for b in BUDGETS) + " | NFE ratio to reach best-of-N@%d |" % BUDGETS[-1])
        print("|---" * (len(BUDGETS) + 2) + "|")
        for name, c in curves.items():
            ratio = "n/a" if ref is None else f"{nfe_to_reach(c, ref) / BUDGETS[-1]:.2f}"
            print(f"| {name} | " + " | ".join(f"{c[b]:.4f}" for b in BUDGETS) + f" | {ratio} |")
        print("NFE/prompt actually used: " + "; ".join(f"{n}: {[int(u) for u in v]}" for n, v in nfes.items()))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n{time.perf_counter() - t0:.0f} s")
