"""Beam search over denoising paths.

At every step each of the B beams proposes M next states from the stochastic kernel
p_θ(x_{t-1} | x_t); every candidate is scored by the reward of its decoded x̂0-prediction (the
denoiser call that predicts it is the one the next transition needs, so scoring costs no extra NFE)
and the B best of the B·M candidates per prompt are kept. With B = 1 this is the per-step greedy
search of SVDD-PM (Li et al. 2024, "Derivative-free guidance in continuous and discrete diffusion
models with soft value-based decoding"), which keeps argmax_m r(x̂0(x_{t-1}^m)).

Cost per prompt: B·M·S NFE (the same as best-of-N with N = B·M) and B·M·(S+1) reward calls.
Defaults: B = 2, M = 4 (ours; SVDD reports M between 5 and 20 for B = 1); kernel DDIM η = 1 for
diffusion, Flow-GRPO SDE a = 0.7 for flow.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor

from steer import kernels
from steer.budget import Budget, Trace
from steer.scoring import decode, score_latents
from steer.search._common import as_prompts, check_budget, check_int, make_result, noise_level_for, prompt_rows
from steer.types import Prediction, StepInfo


def _take(pred: Prediction, idx: Tensor) -> Prediction:
    return Prediction(output=pred.output[idx], x0=pred.x0[idx], eps=pred.eps[idx])


def _top(r: Tensor, num_prompts: int, keep: int) -> Tensor:
    """Flat indices of the ``keep`` best rows of each prompt's group (rows are prompt-major)."""
    per = r.numel() // num_prompts
    top = r.view(num_prompts, per).topk(keep, dim=1).indices  # (P, keep)
    return (top + per * torch.arange(num_prompts)[:, None]).flatten()  # (P*keep,)


@torch.no_grad()
def _beam_steps(process, reward, prompts, cond, *, width: int, cands: int, eta: float, generator,
                trace: Trace) -> Iterator[StepInfo]:
    method, P, S = "beam", len(prompts), process.num_steps
    rows = prompt_rows(P, width * cands)  # (P*B*M,)
    names = [prompts[k] for k in rows.tolist()]
    x = process.init_noise(P * width * cands, generator)  # (P*B*M, *latent)
    pred = process.predict(x, 0, cond.index(rows), trace=trace)
    r = score_latents(process, reward, pred.x0, names, trace=trace, method=method, step=0)
    keep = _top(r, P, width)
    x, pred, r = x[keep], _take(pred, keep), r[keep]  # (P*B, ...)
    for i in range(S):
        g = kernels.transition(process.schedule, i, x, pred, eta)
        mean = g.mean.repeat_interleave(cands, dim=0)  # (P*B*M, *latent)
        std = g.std if g.std.ndim == 0 else g.std.repeat_interleave(cands, dim=0)
        x_next = kernels.sample(kernels.Gaussian(mean=mean, std=std), generator)
        if i + 1 < S:
            pred = process.predict(x_next, i + 1, cond.index(rows), trace=trace)
            r = score_latents(process, reward, pred.x0, names, trace=trace, method=method, step=i + 1)
        else:
            r = score_latents(process, reward, x_next, names, trace=trace, method=method)
        keep = _top(r, P, width)
        x, r = x_next[keep], r[keep]
        if i + 1 < S:
            pred = _take(pred, keep)
        trace.record(step=i, nfe=trace.nfe, best_reward=r.view(P, width)[:, 0].tolist())
        yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"rewards": r.view(P, width)})


def beam(process, reward, prompts, *, generator: Optional[torch.Generator] = None, budget: Optional[Budget] = None,
         callback=None, beam_width: int = 2, candidates: int = 4, noise_level: Optional[float] = None):
    """Beam search over denoising paths: keep the ``beam_width`` best of ``beam_width·candidates``
    kernel proposals per prompt at every step, scored on decoded x̂0; ``beam_width=1`` is SVDD-PM's
    greedy search. Returns the best final beam per prompt; ``candidates`` holds all final beams."""
    method = "beam"
    prompts = as_prompts(prompts)
    width, cands = check_int(method, "beam_width", beam_width), check_int(method, "candidates", candidates)
    eta = noise_level_for(process, noise_level, method)
    if eta == 0 and cands > 1:
        raise ValueError(f"{method}: noise_level=0 makes every candidate of a beam identical; use noise_level > 0")
    check_budget(method, budget, width * cands * process.num_steps, "one beam search (beam_width·candidates·steps)")
    if budget is not None and budget.reward_calls is not None and budget.reward_calls < width * cands * (process.num_steps + 1):
        raise ValueError(f"{method}: budget.reward_calls={budget.reward_calls} is smaller than one beam search "
                         f"({width * cands * (process.num_steps + 1)} per prompt); raise it or lower beam_width/candidates")
    trace = Trace(num_prompts=len(prompts), budget=budget)
    cond = process.prepare(prompts)
    x = r = None
    for info in _beam_steps(process, reward, prompts, cond, width=width, cands=cands, eta=eta, generator=generator,
                            trace=trace):
        x, r = info.x, info.extra["rewards"]
        if callback is not None:
            callback(info)
    P = len(prompts)
    lat = x.view(P, width, *x.shape[1:])  # (P, B, *latent)
    with torch.no_grad():
        imgs = decode(process, x, trace).float()  # (P*B, 3, H, W)
    return make_result(process, prompts, lat[:, 0], r[:, 0], trace,
                       candidates=imgs.view(P, width, *imgs.shape[1:]), candidate_rewards=r)
