"""Zero-order search and search over paths — Ma et al. 2025, "Inference-Time Scaling for Diffusion
Models beyond Scaling Denoising Steps" (arXiv:2501.09732), Sections 3.2–3.3.

``zero_order``: a pivot noise z; N neighbours on the sphere of radius ‖z‖ at cosine similarity ρ
with z (z' = ‖z‖·(ρ·ẑ + sqrt(1−ρ²)·û⊥), û⊥ a random unit direction orthogonal to z); each is
denoised to x_0 with the deterministic sampler (DDIM η = 0 / flow ODE by default, so the noise
decides the sample) and scored; the pivot moves to the best neighbour when it beats the pivot, and
the search repeats. Defaults: ρ = 0.95 (issue spec), N = 4, 8 iterations (ours); ``noise_level``
deterministic (alias ``eta`` on diffusion). Deviation: the pivot is kept when no neighbour beats
it, so the returned reward never decreases with iterations.

``path_search``: N paths per prompt are denoised to ``start_step``; each round every path is
re-noised Δf steps back with the forward process q(x_{t+Δf} | x_t) into M copies, each copy is
denoised Δb > Δf steps, scored on the decoded x̂0-prediction of its last step (the final sample
at the end of the chain), and the N best of the N·M continue. Code names: ``paths`` N,
``candidates`` M (named like beam search's; ``width`` would collide with the image width of
``steer.generate``), ``delta_f`` Δf, ``delta_b`` Δb. Defaults: N = 2, M = 4, Δf = 2, Δb = 4
steps, start at step Δb (ours: the paper states Δf, Δb as noise levels per model); chains shorter
than 5 steps use Δb = S, Δf = max(1, S // 2) and start at step S − 1, so 2–4-step models are
searched too. A 1-step chain has no stretch to re-noise: there Δf = 0, Δb = 1, start at step 0, and
the M copies of a path are fresh x_T draws (re-noising x_T to its own level is the identity), so
1-step path search is best-of-N·M keeping the N best — declared, not the paper's (which has no
1-step setting).
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
from torch import Tensor

from steer import chain, kernels, toolkit
from steer.budget import Budget, Trace
from steer.scoring import score_latents
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


@torch.no_grad()
def _zero_order_steps(process, reward, prompts, cond, *, neighbors, iterations, rho, level, generator,
                      trace: Trace, allowance: toolkit.Allowance) -> Iterator[StepInfo]:
    """Core generator: one ``StepInfo`` per iteration; returns the best final latents (P, ...) and rewards (P,)."""
    method, P, S = "zero_order", len(prompts), process.num_steps
    pivot = process.init_noise(P, generator)  # (P, *latent)
    x0 = chain.run(process, pivot, cond, noise_level=level, generator=generator, trace=trace)
    best_r = score_latents(process, reward, x0, prompts, trace=trace, method=method)  # (P,)
    allowance.spend_all(nfe=S, reward_calls=1)
    best_x0 = x0
    rows = toolkit.prompt_rows(P, neighbors)
    names = [prompts[k] for k in rows.tolist()]
    it = 0
    while (iterations is None or it < iterations) and allowance.affords_all(nfe=neighbors * S, reward_calls=neighbors):
        allowance.spend_all(nfe=neighbors * S, reward_calls=neighbors)
        z = sphere_neighbors(pivot, neighbors, rho, generator)  # (P*N, *latent)
        x0 = chain.run(process, z, cond.index(rows), noise_level=level, generator=generator, trace=trace)
        r = score_latents(process, reward, x0, names, trace=trace, method=method)  # (P*N,)
        idx = toolkit.best_rows(r, P)  # (P,)
        val = r[idx]
        better = val > best_r  # (P,)
        pivot = torch.where(_bcast(better, pivot), z[idx], pivot)
        best_x0 = torch.where(_bcast(better, best_x0), x0[idx], best_x0)
        best_r = torch.where(better, val, best_r)
        trace.record(iteration=it, nfe=trace.nfe, best_reward=best_r.tolist(), moved=better.tolist())
        yield StepInfo(step=it, x=best_x0, nfe=trace.nfe, extra={"rewards": best_r, "moved": better})
        it += 1
    return best_x0, best_r


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))


def zero_order(process, reward, prompts, *, generator: Optional[torch.Generator] = None,
               budget: Optional[Budget] = None, callback=None, neighbors: int = 4, iterations: Optional[int] = 8,
               rho: float = 0.95, noise_level=toolkit.DETERMINISTIC, eta: Optional[float] = None):
    """Zero-order search in noise space (Ma et al. 2025): ``iterations`` rounds of ``neighbors``
    same-norm neighbours at cosine ``rho`` around the pivot noise; ``iterations=None`` runs until the
    ``budget`` is spent. Costs S·(1 + neighbors·iterations) NFE per prompt."""
    method = "zero_order"
    prompts = toolkit.prompt_list(method, prompts)
    toolkit.check_reward(method, reward)
    toolkit.integer(method, "neighbors", neighbors)
    if iterations is not None:
        toolkit.integer(method, "iterations", iterations, minimum=0)
    elif budget is None:
        raise ValueError(f"{method}: iterations=None runs until the budget is spent; pass budget=Budget(nfe=...)")
    if not (isinstance(rho, (int, float)) and -1 < rho < 1):
        raise ValueError(f"{method}: option rho (cosine similarity to the pivot) must lie in (-1, 1), got {rho!r}")
    level = toolkit.noise_level(process, method, noise_level, eta)
    trace = toolkit.plan(method, len(prompts), budget, unit_nfe=process.num_steps, unit="one denoising chain")
    core = _zero_order_steps(process, reward, prompts, process.prepare(prompts), neighbors=neighbors,
                             iterations=iterations, rho=rho, level=level, generator=generator, trace=trace,
                             allowance=toolkit.Allowance(len(prompts), budget))
    best_x0, best_r = toolkit.drain(core, callback)
    return toolkit.result(process, prompts, trace, best_x0, best_r)


# ---- search over paths --------------------------------------------------------------------------

def _short_chain_defaults(S: int, delta_f, delta_b) -> tuple:
    """Δf = 2, Δb = 4 unless given; below 5 steps Δb = S and Δf = max(1, S // 2); at 1 step Δf = 0, Δb = 1."""
    if S == 1:
        return 0 if delta_f is None else delta_f, 1 if delta_b is None else delta_b
    short = S < 5
    return (max(1, S // 2) if short else 2) if delta_f is None else delta_f, \
        (S if short else 4) if delta_b is None else delta_b


def _check_path_options(S: int, paths, candidates, delta_f, delta_b, start_step) -> int:
    method = "path_search"
    for name, v in (("paths", paths), ("candidates", candidates), ("delta_b", delta_b)):
        toolkit.integer(method, name, v)
    toolkit.integer(method, "delta_f", delta_f, minimum=0 if S == 1 else 1)
    if delta_b <= delta_f:
        raise ValueError(f"path_search: delta_b={delta_b} must exceed delta_f={delta_f} so each round moves forward")
    start = (delta_b if delta_b < S else S - 1) if start_step is None else start_step
    if start_step is None and not start < S:
        raise ValueError(f"path_search: the chain has {S} steps, too few for the default start_step = delta_b = "
                         f"{delta_b}; lower delta_b / delta_f or set start_step in [delta_f, {S - 1}]")
    if isinstance(start, bool) or not isinstance(start, int) or not delta_f <= start < S:
        raise ValueError(f"path_search: start_step must be an integer in [delta_f={delta_f}, {S - 1}], got {start!r}")
    return start


@torch.no_grad()
def _path_steps(process, reward, prompts, cond, *, paths, candidates, delta_f, delta_b, start, level, generator,
                trace) -> Iterator[StepInfo]:
    """Core generator: one ``StepInfo`` per round; returns the final paths (P·N, ...), best first, and
    their rewards (P, N)."""
    method, P, S = "path_search", len(prompts), process.num_steps
    rows_n = toolkit.prompt_rows(P, paths)
    x = process.init_noise(P * paths, generator)  # (P*N, *latent)
    x = chain.run(process, x, cond.index(rows_n), end=start, noise_level=level, generator=generator, trace=trace)
    rows = toolkit.prompt_rows(P, paths * candidates)
    names = [prompts[k] for k in rows.tolist()]
    j, rnd = start, 0
    while j < S:
        i, k = j - delta_f, min(j - delta_f + delta_b, S)
        copies = x.repeat_interleave(candidates, dim=0)  # (P*N*M, *latent)
        noise = process.init_noise(copies.shape[0], generator)
        y = noise if j == 0 else kernels.renoise(process.schedule, copies, j, i, noise)  # j = 0: 1-step chain
        x0_hat = None
        for info in chain.denoise(process, y, cond.index(rows), start=i, end=k, noise_level=level,
                                  generator=generator, trace=trace):
            y, x0_hat = info.x, info.extra["x0"]
        scored = y if k == S else x0_hat
        r = score_latents(process, reward, scored, names, trace=trace, method=method, step=None if k == S else k)
        keep = toolkit.top_rows(r, P, paths)
        x, r_keep = y[keep], r[keep]
        trace.record(round=rnd, step=k, nfe=trace.nfe, best_reward=r_keep.view(P, paths)[:, 0].tolist())
        yield StepInfo(step=k, x=x, nfe=trace.nfe, extra={"rewards": r_keep.view(P, paths)})
        j, rnd = k, rnd + 1
    return x, r_keep.view(P, paths)


def path_search(process, reward, prompts, *, generator: Optional[torch.Generator] = None,
                budget: Optional[Budget] = None, callback=None, paths: int = 2, candidates: int = 4,
                delta_f: Optional[int] = None, delta_b: Optional[int] = None, start_step: Optional[int] = None, noise_level=toolkit.DETERMINISTIC,
                eta: Optional[float] = None):
    """Search over paths (Ma et al. 2025): re-noise each of ``paths`` states ``delta_f`` steps back into
    ``candidates`` copies, denoise ``delta_b`` steps, keep the best ``paths``; until x_0. Returns the best
    final sample per prompt; ``candidates`` holds the final paths."""
    method = "path_search"
    prompts = toolkit.prompt_list(method, prompts)
    toolkit.check_reward(method, reward)
    S = process.num_steps
    delta_f, delta_b = _short_chain_defaults(S, delta_f, delta_b)
    start = _check_path_options(S, paths, candidates, delta_f, delta_b, start_step)
    level = toolkit.noise_level(process, method, noise_level, eta)
    rounds = math.ceil((S - start) / (delta_b - delta_f))
    need = paths * start + rounds * paths * candidates * delta_b  # upper bound per prompt
    trace = toolkit.plan(method, len(prompts), budget, unit_nfe=need,
                         unit="one path search (paths·start_step + rounds·paths·candidates·delta_b)")
    core = _path_steps(process, reward, prompts, process.prepare(prompts), paths=paths, candidates=candidates,
                       delta_f=delta_f,
                       delta_b=delta_b, start=start, level=level, generator=generator, trace=trace)
    x, r = toolkit.drain(core, callback)
    return toolkit.from_ranked(process, prompts, trace, x, r)
