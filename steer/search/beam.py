"""Beam search over denoising paths.

At every step each of the B beams proposes M next states from the stochastic kernel
p_θ(x_{t-1} | x_t); every candidate is scored by the reward of its decoded x̂0-prediction (the
denoiser call that predicts it is the one the next transition needs, so scoring costs no extra NFE)
and the B best of the B·M candidates per prompt are kept. With B = 1 this is the per-step greedy
search of SVDD-PM (Li et al. 2024, "Derivative-free guidance in continuous and discrete diffusion
models with soft value-based decoding"), which keeps argmax_m r(x̂0(x_{t-1}^m)).

Cost per prompt: B·M·S NFE (the same as best-of-N with N = B·M) and B·M·(S+1) reward calls.
Defaults: B = 2, M = 4 (ours; SVDD reports M between 5 and 20 for B = 1); kernel DDIM η = 1 for
diffusion, Flow-GRPO SDE a = 0.7 for flow (``noise_level``, alias ``eta`` on diffusion).
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch

from steer import chain, toolkit
from steer.budget import Budget, Trace
from steer.scoring import score_latents
from steer.types import StepInfo

METHOD = "beam"


@torch.no_grad()
def _beam_steps(process, reward, prompts, cond, *, width: int, cands: int, level: float, generator,
                trace: Trace) -> Iterator[StepInfo]:
    """Core generator: yields after every step; returns the final beams (P·B, ...) and their rewards (P, B)."""
    P, S = len(prompts), process.num_steps
    rows = toolkit.prompt_rows(P, width * cands)  # (P*B*M,)
    names = [prompts[k] for k in rows.tolist()]
    x = process.init_noise(P * width * cands, generator)  # (P*B*M, *latent)
    prop = chain.propose(process, x, 0, cond.index(rows), noise_level=level, trace=trace)
    r = score_latents(process, reward, prop.pred.x0, names, trace=trace, method=METHOD, step=0)
    keep = toolkit.top_rows(r, P, width)
    x, prop, r = x[keep], prop.take(keep), r[keep]  # (P*B, ...)
    for i in range(S):
        x_next = chain.sample(prop.repeat(cands).kernel, generator)  # (P*B*M, *latent)
        if i + 1 < S:
            prop = chain.propose(process, x_next, i + 1, cond.index(rows), noise_level=level, trace=trace)
            r = score_latents(process, reward, prop.pred.x0, names, trace=trace, method=METHOD, step=i + 1)
        else:
            r = score_latents(process, reward, x_next, names, trace=trace, method=METHOD)
        keep = toolkit.top_rows(r, P, width)
        x, r = x_next[keep], r[keep]
        if i + 1 < S:
            prop = prop.take(keep)
        trace.record(step=i, nfe=trace.nfe, best_reward=r.view(P, width)[:, 0].tolist())
        yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"rewards": r.view(P, width)})
    return x, r.view(P, width)


def beam(process, reward, prompts, *, generator: Optional[torch.Generator] = None, budget: Optional[Budget] = None,
         callback=None, beam_width: int = 2, candidates: int = 4, noise_level=toolkit.STOCHASTIC,
         eta: Optional[float] = None):
    """Beam search over denoising paths: keep the ``beam_width`` best of ``beam_width·candidates``
    kernel proposals per prompt at every step, scored on decoded x̂0; ``beam_width=1`` is SVDD-PM's
    greedy search. Returns the best final beam per prompt; ``candidates`` holds all final beams."""
    prompts = toolkit.prompt_list(METHOD, prompts)
    toolkit.check_reward(METHOD, reward)
    width, cands = toolkit.integer(METHOD, "beam_width", beam_width), toolkit.integer(METHOD, "candidates", candidates)
    level = toolkit.noise_level(process, METHOD, noise_level, eta)
    if level == 0 and cands > 1:
        raise ValueError(f"{METHOD}: noise_level=0 makes every candidate of a beam identical; use noise_level > 0")
    S, n = process.num_steps, width * cands
    trace = toolkit.plan(METHOD, len(prompts), budget, unit_nfe=n * S, unit="one beam search (beam_width·candidates·steps)",
                         nfe=n * S, reward_calls=n * (S + 1), hint="lower beam_width/candidates")
    core = _beam_steps(process, reward, prompts, process.prepare(prompts), width=width, cands=cands, level=level,
                       generator=generator, trace=trace)
    x, r = toolkit.drain(core, callback)
    return toolkit.from_ranked(process, prompts, trace, x, r)
