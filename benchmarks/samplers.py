"""Samplers' overhead on the tiny SD fixture (ratios measured in one run).

(a) FK wall time / time inside denoiser calls + decodes + reward calls (goal <= 1.10);
(b) FK with K particles vs best-of-N with n = K at the same NFE, wall-time ratio (goal <= 1.2);
(c) ReNO: activation memory kept for backward with vs without gradient checkpointing (bytes of
    tensors saved by autograd, or CUDA peak memory on a GPU), and seconds per iteration relative to one
    forward + backward of the chain.

    python benchmarks/samplers.py [--steps 20] [--particles 8] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from steer.pipelines import from_pipe
from steer.rewards.base import Reward
from steer.samplers import best_of_n, fk, reno
from steer.samplers.reno import _forward
from steer.budget import Trace
import _paths  # noqa: F401,E402  (repository root on sys.path: the fixtures live in tests/)
from tests.fixtures import tiny  # noqa: E402


class Brightness(Reward):
    name, differentiable = "brightness", True

    def score(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


class Timed:
    """Accumulates seconds spent inside the wrapped callables."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def inner(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t
        return inner


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def overhead(process, reward, prompts, K, repeats):
    timer = Timed()
    process.denoise, process.decode = timer.wrap(process.denoise), timer.wrap(process.decode)
    reward.score = timer.wrap(reward.score)
    ratios = []
    for _ in range(repeats):
        timer.seconds = 0.0
        t = time.perf_counter()
        fk(process, reward, prompts, generator=torch.Generator().manual_seed(0), particles=K)
        ratios.append((time.perf_counter() - t) / timer.seconds)
    del process.denoise, process.decode, reward.score
    return min(ratios)


def saved_bytes(fn):
    """Bytes of tensors autograd keeps for the backward pass while ``fn`` runs (unique storages)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            total[0] += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def reno_memory(process, reward, prompts, use_ckpt):
    cond = process.prepare(prompts)
    z = process.init_noise(len(prompts), torch.Generator().manual_seed(0)).requires_grad_(True)
    if torch.cuda.is_available() and process.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        _forward(process, [(reward, 1.0)], z, cond, Trace(), use_ckpt, 0)[1].sum().backward()
        return torch.cuda.max_memory_allocated()
    nbytes, _ = saved_bytes(lambda: _forward(process, [(reward, 1.0)], z, cond, Trace(), use_ckpt, 0))
    return nbytes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--reno-steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    pipe = tiny.build("sd")
    prompts, reward, K = ["a red circle above a blue square"], Brightness(), args.particles
    process = from_pipe(pipe, num_inference_steps=args.steps)

    ratio = overhead(process, reward, prompts, K, args.repeats)
    print(f"(a) FK wall / (denoiser + decode + reward), K={K}, S={args.steps}: {ratio:.3f}  (goal <= 1.10)")

    t_fk = best_time(lambda: fk(process, reward, prompts, generator=torch.Generator().manual_seed(0), particles=K),
                     args.repeats)
    t_bon = best_time(lambda: best_of_n(process, reward, prompts, generator=torch.Generator().manual_seed(0), n=K),
                      args.repeats)
    print(f"(b) FK / best-of-N wall time at {K * args.steps} NFE per prompt: {t_fk:.2f}s / {t_bon:.2f}s = "
          f"{t_fk / t_bon:.3f}  (goal <= 1.2)")

    few = from_pipe(pipe, num_inference_steps=args.reno_steps)
    with_ck, without = reno_memory(few, reward, prompts, True), reno_memory(few, reward, prompts, False)
    print(f"(c) ReNO memory kept for backward, S={args.reno_steps}: checkpointing {with_ck / 2**20:.2f} MiB, "
          f"without {without / 2**20:.2f} MiB, ratio {with_ck / without:.3f}")
    iters = 5
    t_reno = best_time(lambda: reno(few, reward, prompts, generator=torch.Generator().manual_seed(0),
                                    iterations=iters), args.repeats) / iters
    cond = few.prepare(prompts)

    def fwd_bwd():
        z = few.init_noise(1, torch.Generator().manual_seed(0)).requires_grad_(True)
        _forward(few, [(reward, 1.0)], z, cond, Trace(), False, 0)[1].sum().backward()

    t_chain = best_time(fwd_bwd, args.repeats)
    print(f"(c) ReNO seconds per iteration / one forward+backward of the chain (no checkpointing): "
          f"{t_reno:.3f}s / {t_chain:.3f}s = {t_reno / t_chain:.3f}")


if __name__ == "__main__":
    main()
