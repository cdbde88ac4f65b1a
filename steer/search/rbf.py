"""RBF: Rollover Budget Forcing (Kim et al. 2025, "Inference-Time Scaling for Flow Models via Stochastic
Generation and Rollover Budget Forcing"; code KAIST-Visual-AI-Group/Flow-Inference-Time-Scaling,
``rbf/rbf.py`` and ``rbf/corrector/rgrp_sampler.py``).

A flow model is sampled as a VP SDE (``steer/search/vp_sde.py``) so that a state can branch. Each of
``chains`` chains per prompt starts from the best of ``initial_candidates`` draws of x_T (valued by
r(decode(x̂0))). Then, at every step, the chain draws one candidate x_{i+1} at a time from the kernel
at its x_i (one denoiser call each, valued by r(x̂0(x_{i+1}))) until a candidate beats the best
reward the chain has seen so far — it moves there at once and the draws it did not use *roll over*
to the next step's quota — or the step's quota is spent, when it moves to the step's best candidate.
Quota: q = ⌊(max_nfe − chains·initial_candidates)/(S·chains)⌋ per step; after a rollover after j of
q' draws the next step gets q' − j + q, after an exhausted step q. At the last step (states at level
S−1) the chain keeps drawing until ``max_nfe`` is spent; the output is x̂0 of the best last-step
candidate over the chains (for flow, the Euler step to σ = 0).

Defaults (the reference configs ``config/*/rbf.yaml``): ``max_nfe=500`` per prompt (or
``Budget(nfe=...)`` when given), ``chains=2`` (its ``batch_size``), ``initial_candidates=25`` (its
``init_n_particles``), VP-SDE with g(r) = 3·r² (``diffusion_norm=3``, ``diffusion_coefficient=square``,
``convert_scheduler=vp``) on flow processes; a diffusion process is already VP and branches with its
own reverse SDE, DDIM η = 1 (DDPM), which is not a knob here (ours: the paper treats flow models only).
With one step (x_T -> x̂0) every draw is a fresh x_T: RBF is then best-of-``max_nfe`` over the noise.
Deviations: the reference stops one draw early (it needs ``nfe + chains < max_nfe``); here draws go
on while ``nfe + chains <= max_nfe``. Its time grid is uniform in the VP time (with FLUX's 10 steps);
here the process' schedule is used (see ``vp_sde``). Chains at different steps are evaluated in one
denoiser call per step rather than one call with per-row times (same NFE).
Cost per prompt: ``max_nfe`` NFE (rounded down to a multiple of ``chains``) and as many reward calls.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor

from steer import chain, kernels, toolkit
from steer.budget import Budget, Trace
from steer.scoring import score_latents
from steer.search.vp_sde import vp_sde
from steer.types import Prediction, StepInfo

METHOD = "rbf"
DEFAULT_MAX_NFE = 500
DDPM_ETA = 1.0  # a diffusion model is already VP: its own reverse SDE (DDIM η = 1, DDPM) lets states branch


class Rollover(NamedTuple):
    """Which chains move on after a draw, and their draw counters and quotas afterwards."""

    rolled: Tensor  # (N,) bool: the candidate beat the best so far and the chain moves to it
    exhausted: Tensor  # (N,) bool: the quota is spent without that; the chain moves to the step's best
    count: Tensor  # (N,) draws made at the current step
    quota: Tensor  # (N,) draws allowed at the current step


def rollover(value: Tensor, best: Tensor, count: Tensor, quota: Tensor, last: Tensor, per_step: int) -> Rollover:
    """The budget-forcing rule after one more draw of value ``value`` (N,) per chain: ``best`` the best
    value seen, ``count``/``quota`` before this draw, ``last`` chains at the last step (they never move)."""
    count = count + 1
    rolled = (value > best) & ~last
    exhausted = (count >= quota) & ~rolled & ~last
    moved = rolled | exhausted
    quota = torch.where(rolled, quota - count + per_step, torch.where(exhausted, per_step, quota))
    return Rollover(rolled, exhausted, torch.where(moved, 0, count), quota)


def _rows(p: Prediction, idx: Tensor) -> Prediction:
    return Prediction(output=p.output[idx], x0=p.x0[idx], eps=p.eps[idx])


def _put(p: Prediction, mask: Tensor, q: Prediction) -> Prediction:
    """``p`` with the rows ``mask`` taken from ``q``."""
    w = mask.to(p.x0.device).view(-1, *[1] * (p.x0.dim() - 1))
    return Prediction(*(torch.where(w, b, a) for a, b in zip((p.output, p.x0, p.eps), (q.output, q.x0, q.eps))))


def _draw(process, x: Tensor, pred: Prediction, level: Tensor, cond, *, norm: float, generator,
          trace: Trace) -> tuple[Tensor, Prediction]:
    """One kernel draw per chain from its own step, and the denoiser at the draws (one call per step)."""
    x_new = torch.empty_like(x, dtype=torch.float32)
    out = [torch.empty_like(x_new) for _ in range(3)]  # output, x0, eps
    for i in level.unique().tolist():
        idx = (level == i).nonzero().flatten()
        p = _rows(pred, idx)
        if process.schedule.kind == "flow":
            kernel = vp_sde(process.schedule, i, x[idx], p, norm)
        else:
            kernel = kernels.transition(process.schedule, i, x[idx], p, DDPM_ETA)
        x_new[idx] = chain.sample(kernel, generator)
        q = process.predict(x_new[idx], i + 1, cond.index(idx), trace=trace)
        for t, part in zip(out, (q.output, q.x0, q.eps)):
            t[idx] = part
    return x_new, Prediction(*out)


@torch.no_grad()
def _rbf_steps(process, reward, prompts, cond, *, chains: int, init: int, draws: int, per_step: int,
               norm: float, generator, trace: Trace) -> Iterator[StepInfo]:
    """Core generator: yields after every draw; returns the final x̂0 (P·chains, ...) ranked best-first
    per prompt and their rewards (P, chains)."""
    P, S = len(prompts), process.num_steps
    N = P * chains
    rows = toolkit.prompt_rows(P, chains * init)
    x = process.init_noise(N * init, generator)  # (N·init, *latent)
    pred = process.predict(x, 0, cond.index(rows), trace=trace)
    v = score_latents(process, reward, pred.x0, [prompts[k] for k in rows.tolist()], trace=trace,
                      method=METHOD, step=0)
    keep = toolkit.best_rows(v, N)  # the best initial draw of each chain
    x, pred, best = x[keep], _rows(pred, keep), v[keep].float().cpu()  # (N, ...)
    ccond = cond.index(toolkit.prompt_rows(P, chains))
    level = torch.zeros(N, dtype=torch.long)
    count, quota = torch.zeros(N, dtype=torch.long), torch.full((N,), per_step, dtype=torch.long)
    # the current step's best draw (with one step, x̂0 of the initial draw is the output)
    top_v, top_x, top_pred = best.clone() if S == 1 else torch.full((N,), -torch.inf), x.clone(), pred
    for d in range(draws):
        x_new, pred_new = _draw(process, x, pred, level, ccond, norm=norm, generator=generator, trace=trace)
        v = score_latents(process, reward, pred_new.x0, list(ccond.prompts), trace=trace, method=METHOD,
                          step=d + 1).float().cpu()
        up = v > top_v
        top_v, top_x, top_pred = torch.where(up, v, top_v), _where(up, x_new, top_x), _put(top_pred, up, pred_new)
        last = level >= S - 2
        rule = rollover(v, best, count, quota, last, per_step)
        best = torch.maximum(best, v)
        x = _where(rule.rolled, x_new, _where(rule.exhausted, top_x, x))
        pred = _put(_put(pred, rule.exhausted, top_pred), rule.rolled, pred_new)
        moved = rule.rolled | rule.exhausted
        trace.record(draw=d, level=level.tolist(), value=v.tolist(), draws=(count + 1).tolist(),
                     quota=quota.tolist(), rolled=rule.rolled.tolist(), exhausted=rule.exhausted.tolist())
        level, count, quota = level + moved.long(), rule.count, rule.quota
        top_v = torch.where(moved, -torch.inf, top_v)
        yield StepInfo(step=d, x=x, nfe=trace.nfe, extra={"level": level.clone(), "best": best.view(P, chains)})
    order = top_v.view(P, chains).argsort(dim=1, descending=True)  # (P, chains)
    flat = (order + chains * torch.arange(P)[:, None]).flatten()
    return top_pred.x0[flat.to(top_pred.x0.device)], top_v[flat].view(P, chains)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.to(a.device).view(-1, *[1] * (a.dim() - 1)), a, b)


def rbf(process, reward, prompts, *, generator: Optional[torch.Generator] = None, budget: Optional[Budget] = None,
        callback=None, max_nfe: Optional[int] = None, chains: int = 2, initial_candidates: int = 25,
        diffusion_norm: float = 3.0):
    """Rollover Budget Forcing (Kim et al. 2025): per step, draw kernel candidates until one beats the
    chain's best reward (unused draws roll over to the next step) or the step's quota is spent. Defaults
    ``max_nfe=500`` per prompt (``Budget(nfe=...)`` if given), 2 chains, 25 initial draws, VP-SDE g = 3·r²
    on flow, DDIM η = 1 on diffusion."""
    prompts = toolkit.prompt_list(METHOD, prompts)
    chains = toolkit.integer(METHOD, "chains", chains)
    init = toolkit.integer(METHOD, "initial_candidates", initial_candidates)
    norm = toolkit.number(METHOD, "diffusion_norm", diffusion_norm, positive=True, maximum=toolkit.MAX_NOISE_LEVEL)
    toolkit.check_reward(METHOD, reward)
    S = process.num_steps
    if max_nfe is None:
        max_nfe = budget.nfe if isinstance(budget, Budget) and budget.nfe is not None else DEFAULT_MAX_NFE
    max_nfe = toolkit.integer(METHOD, "max_nfe", max_nfe, maximum=toolkit.MAX_COUNT * 10)
    if S == 1:  # x_T -> x̂0: every draw is a fresh x_T, RBF is best-of-N over the initial noise
        init = max(1, max_nfe // chains)
    per_step = (max_nfe - chains * init) // (S * chains)
    if per_step < 1 and S > 1:
        raise ValueError(f"{METHOD}: max_nfe={max_nfe} leaves no draw per step after {chains}·{init} initial "
                         f"draws over {S} steps; raise max_nfe to at least {chains * (init + S)} or lower "
                         f"chains / initial_candidates")
    draws = max(0, (max_nfe - chains * init) // chains)
    nfe = chains * (init + draws)
    trace = toolkit.plan(METHOD, len(prompts), budget, unit_nfe=min(nfe, chains * (init + S)), nfe=nfe,
                         reward_calls=nfe, unit="one RBF run (chains·(initial_candidates + steps))",
                         hint="lower max_nfe")
    core = _rbf_steps(process, reward, prompts, process.prepare(prompts), chains=chains, init=init, draws=draws,
                      per_step=per_step, norm=norm, generator=generator, trace=trace)
    x0, v = toolkit.drain(core, callback)
    return toolkit.from_ranked(process, prompts, trace, x0, v)
