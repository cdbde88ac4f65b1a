"""Zero-order search and search over paths — Ma et al. 2025, "Inference-Time Scaling for Diffusion
Models beyond Scaling Denoising Steps" (arXiv:2501.09732), Sections 3.2–3.3.

``zero_order``: a pivot noise z; N neighbours on the sphere of radius ‖z‖ at cosine similarity ρ
with z (z' = ‖z‖·(ρ·ẑ + sqrt(1−ρ²)·û⊥), û⊥ a random unit direction orthogonal to z); each is
denoised to x_0 with the deterministic sampler (DDIM η = 0 / flow ODE by default, so the noise
decides the sample) and scored; the pivot moves to the best neighbour when it beats the pivot, and
the search repeats. Defaults: ρ = 0.95 (issue spec), N = 4, 8 iterations (ours). Deviation: the
pivot is kept when no neighbour beats it, so the returned reward never decreases with iterations.

``path_search``: N paths per prompt are denoised to ``start_step``; each round every path is
re-noised Δf steps back with the forward process q(x_{t+Δf} | x_t) into M copies, each copy is
denoised Δb > Δf steps, scored on the decoded x̂0-prediction of its last step (the final sample
at the end of the chain), and the N best of the N·M continue. Defaults: N = 2, M = 4, Δf = 2,
Δb = 4 steps, start at step Δb (ours: the paper states Δf, Δb as noise levels per model).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
from torch import Tensor

from steer import chain, kernels
from steer.budget import Budget, Trace
from steer.scoring import decode, score_latents
from steer.search._common import as_prompts, check_budget, check_int, make_result, noise_level_for, prompt_rows
from steer.types import StepInfo


def sphere_neighbors(pivot: Tensor, n: int, rho: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` points per pivot row with the same norm and cosine similarity ``rho``: (P, ...) -> (P*n, ...)."""
    p = pivot.float().flatten(1).repeat_interleave(n, dim=0)  # (P*n, d)
    device = generator.device if generator is not None else "cpu"
    u = torch.randn(p.shape, generator=generator, device=device).to(p.device)  # (P*n, d)
    norm = p.norm(dim=1, keepdim=True)  # (P*n, 1)
    p_hat = p / norm
    u_perp = u - (u * p_hat).sum(1, keepdim=True) * p_hat
    u_perp = u_perp / u_perp.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = norm * (rho * p_hat + math.sqrt(1 - rho**2) * u_perp)
    return out.view(-1, *pivot.shape[1:])


def _best_per_prompt(r: Tensor, num_prompts: int) -> tuple[Tensor, Tensor]:
    """Per prompt: (best reward (P,), flat index of the best row (P,)) among its rows (prompt-major)."""
    per = r.numel() // num_prompts
    val, idx = r.view(num_prompts, per).max(dim=1)
    return val, idx + per * torch.arange(num_prompts)


@torch.no_grad()
def _zero_order_steps(process, reward, prompts, cond, *, neighbors, iterations, rho, eta, generator, trace,
                      budget) -> Iterator[StepInfo]:
    method, P, S = "zero_order", len(prompts), process.num_steps
    pivot = process.init_noise(P, generator)  # (P, *latent)
    x0 = chain.run(process, pivot, cond, noise_level=eta, generator=generator, trace=trace)
    best_r = score_latents(process, reward, x0, prompts, trace=trace, method=method)  # (P,)
    best_x0 = x0
    rows = prompt_rows(P, neighbors)
    names = [prompts[k] for k in rows.tolist()]
    it = 0
    while (iterations is None or it < iterations) and trace.can_spend(nfe=P * neighbors * S,
                                                                      reward_calls=P * neighbors):
        z = sphere_neighbors(pivot, neighbors, rho, generator)  # (P*N, *latent)
        x0 = chain.run(process, z, cond.index(rows), noise_level=eta, generator=generator, trace=trace)
        r = score_latents(process, reward, x0, names, trace=trace, method=method)  # (P*N,)
        val, idx = _best_per_prompt(r, P)
        better = val > best_r  # (P,)
        pivot = torch.where(_bcast(better, pivot), z[idx], pivot)
        best_x0 = torch.where(_bcast(better, best_x0), x0[idx], best_x0)
        best_r = torch.where(better, val, best_r)
        trace.record(iteration=it, nfe=trace.nfe, best_reward=best_r.tolist(), moved=better.tolist())
        yield StepInfo(step=it, x=best_x0, nfe=trace.nfe, extra={"rewards": best_r, "moved": better})
        it += 1
    yield StepInfo(step=it, x=best_x0, nfe=trace.nfe, extra={"rewards": best_r, "final": True})


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))


def zero_order(process, reward, prompts, *, generator: Optional[torch.Generator] = None,
               budget: Optional[Budget] = None, callback=None, neighbors: int = 4, iterations: Optional[int] = 8,
               rho: float = 0.95, noise_level: float = 0.0):
    """Zero-order search in noise space (Ma et al. 2025): ``iterations`` rounds of ``neighbors``
    same-norm neighbours at cosine ``rho`` around the pivot noise; ``iterations=None`` runs until the
    ``budget`` is spent. Costs S·(1 + neighbors·iterations) NFE per prompt."""
    method = "zero_order"
    prompts = as_prompts(prompts)
    check_int(method, "neighbors", neighbors)
    if iterations is not None:
        check_int(method, "iterations", iterations, minimum=0)
    elif budget is None:
        raise ValueError(f"{method}: iterations=None runs until the budget is spent; pass budget=Budget(nfe=...)")
    if not (isinstance(rho, (int, float)) and -1 < rho < 1):
        raise ValueError(f"{method}: option rho (cosine similarity to the pivot) must lie in (-1, 1), got {rho!r}")
    eta = noise_level_for(process, noise_level, method)
    check_budget(method, budget, process.num_steps, "one denoising chain")
    trace = Trace(num_prompts=len(prompts), budget=budget)
    cond = process.prepare(prompts)
    for info in _zero_order_steps(process, reward, prompts, cond, neighbors=neighbors, iterations=iterations, rho=rho,
                                  eta=eta, generator=generator, trace=trace, budget=budget):
        if callback is not None and not info.extra.get("final"):
            callback(info)
    return make_result(process, prompts, info.x, info.extra["rewards"], trace)


# ---- search over paths --------------------------------------------------------------------------

def _check_path_options(S: int, paths, width, delta_f, delta_b, start_step) -> int:
    method = "path_search"
    check_int(method, "paths", paths)
    check_int(method, "width", width)
    check_int(method, "delta_f", delta_f)
    check_int(method, "delta_b", delta_b)
    if delta_b <= delta_f:
        raise ValueError(f"path_search: delta_b={delta_b} must exceed delta_f={delta_f} so each round moves forward")
    start = delta_b if start_step is None else start_step
    if start_step is None and not start < S:
        raise ValueError(f"path_search: the chain has {S} steps, too few for the default start_step = delta_b = "
                         f"{delta_b}; lower delta_b / delta_f or set start_step in [delta_f, {S - 1}]")
    if isinstance(start, bool) or not isinstance(start, int) or not delta_f <= start < S:
        raise ValueError(f"path_search: start_step must be an integer in [delta_f={delta_f}, {S - 1}], got {start!r}")
    return start


@torch.no_grad()
def _path_steps(process, reward, prompts, cond, *, paths, width, delta_f, delta_b, start, eta, generator,
                trace) -> Iterator[StepInfo]:
    method, P, S = "path_search", len(prompts), process.num_steps
    rows_n = prompt_rows(P, paths)
    x = process.init_noise(P * paths, generator)  # (P*N, *latent)
    x = chain.run(process, x, cond.index(rows_n), end=start, noise_level=eta, generator=generator, trace=trace)
    rows = prompt_rows(P, paths * width)
    names = [prompts[k] for k in rows.tolist()]
    j, rnd = start, 0
    while j < S:
        i, k = j - delta_f, min(j - delta_f + delta_b, S)
        copies = x.repeat_interleave(width, dim=0)  # (P*N*M, *latent)
        noise = process.init_noise(copies.shape[0], generator)
        y = kernels.renoise(process.schedule, copies, j, i, noise)
        x0_hat = None
        for info in chain.denoise(process, y, cond.index(rows), start=i, end=k, noise_level=eta,
                                  generator=generator, trace=trace):
            y, x0_hat = info.x, info.extra["x0"]
        scored = y if k == S else x0_hat
        r = score_latents(process, reward, scored, names, trace=trace, method=method, step=None if k == S else k)
        keep = _top(r, P, paths)
        x, r_keep = y[keep], r[keep]
        trace.record(round=rnd, step=k, nfe=trace.nfe, best_reward=r_keep.view(P, paths)[:, 0].tolist())
        yield StepInfo(step=k, x=x, nfe=trace.nfe, extra={"rewards": r_keep.view(P, paths)})
        j, rnd = k, rnd + 1


def _top(r: Tensor, num_prompts: int, keep: int) -> Tensor:
    per = r.numel() // num_prompts
    top = r.view(num_prompts, per).topk(keep, dim=1).indices  # (P, keep)
    return (top + per * torch.arange(num_prompts)[:, None]).flatten()


def path_search(process, reward, prompts, *, generator: Optional[torch.Generator] = None,
                budget: Optional[Budget] = None, callback=None, paths: int = 2, width: int = 4, delta_f: int = 2,
                delta_b: int = 4, start_step: Optional[int] = None, noise_level: float = 0.0):
    """Search over paths (Ma et al. 2025): re-noise each of ``paths`` states ``delta_f`` steps back into
    ``width`` copies, denoise ``delta_b`` steps, keep the best ``paths``; until x_0. Returns the best
    final sample per prompt; ``candidates`` holds the final paths."""
    method = "path_search"
    prompts = as_prompts(prompts)
    S = process.num_steps
    start = _check_path_options(S, paths, width, delta_f, delta_b, start_step)
    eta = noise_level_for(process, noise_level, method)
    rounds = math.ceil((S - start) / (delta_b - delta_f))
    need = paths * start + rounds * paths * width * delta_b  # upper bound per prompt
    check_budget(method, budget, need, "one path search (paths·start_step + rounds·paths·width·delta_b)")
    trace = Trace(num_prompts=len(prompts), budget=budget)
    cond = process.prepare(prompts)
    for info in _path_steps(process, reward, prompts, cond, paths=paths, width=width, delta_f=delta_f,
                            delta_b=delta_b, start=start, eta=eta, generator=generator, trace=trace):
        if callback is not None:
            callback(info)
    P = len(prompts)
    r = info.extra["rewards"]  # (P, N)
    with torch.no_grad():
        imgs = decode(process, info.x, trace).float()  # (P*N, 3, H, W)
    lat = info.x.view(P, paths, *info.x.shape[1:])
    return make_result(process, prompts, lat[:, 0], r[:, 0], trace,
                       candidates=imgs.view(P, paths, *imgs.shape[1:]), candidate_rewards=r)
