"""Best-of-N: N independent chains per prompt, the highest-reward sample kept.

The baseline every steering paper compares against (e.g. Singhal et al. 2025, §5; Ma et al. 2025,
"Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps", random search).
For i.i.d. x¹..x^N ~ p and a continuous reward, the kept sample has density N·p(x)·F(r(x))^{N−1},
F the CDF of r(x) under p — not the tilted p(x)·exp(λ·r(x)); tests check exactly that.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from steer import chain, toolkit
from steer.budget import Budget
from steer.scoring import decode_and_score
from steer.types import Result, StepInfo

METHOD = "best_of_n"


def best_of_n(process, reward, prompts: Sequence[str] | str, *, generator: Optional[torch.Generator] = None,
              budget: Optional[Budget] = None, callback: Optional[Callable[[StepInfo], object]] = None,
              n: int = 4, noise_level=toolkit.DETERMINISTIC, eta: Optional[float] = None) -> Result:
    """Best-of-N sampling: ``n`` chains per prompt run as one batch, each final image scored once,
    the best kept per prompt.

    Defaults: ``n=4``; the process' ordinary sampler (``noise_level`` deterministic: DDIM η = 0 for
    diffusion, the Euler ODE for flow matching); ``noise_level`` > 0 gives best-of-N with the same
    stochastic kernel as FK / DTS (their control). NFE per prompt: n·S.
    ``Result.candidates``/``candidate_rewards`` hold all n samples per prompt.
    """
    prompts = toolkit.prompt_list(METHOD, prompts)
    n = toolkit.integer(METHOD, "n", n)
    toolkit.check_reward(METHOD, reward)
    level = toolkit.noise_level(process, METHOD, noise_level, eta)
    S = process.num_steps
    trace = toolkit.plan(METHOD, len(prompts), budget, unit_nfe=S, nfe=n * S, reward_calls=n,
                         hint=f"lower n (at most {budget.nfe // S if budget and budget.nfe else n} fit)")
    core = _best_of_n_steps(process, reward, prompts, n, level, generator, trace)
    images, rewards, latents = toolkit.drain(core, callback)
    return toolkit.from_candidates(process, prompts, trace, images, rewards, latents)


def _best_of_n_steps(process, reward, prompts, n, level, generator, trace) -> Iterator[StepInfo]:
    """Core generator: yields after every denoising step, returns (images, rewards, latents) flat."""
    cond = process.prepare(prompts).repeat(n)
    x = process.init_noise(len(cond), generator)  # (P·n, *latent)
    with torch.no_grad():
        for info in chain.denoise(process, x, cond, noise_level=level, generator=generator, trace=trace):
            x = info.x
            trace.record(step=info.step)
            yield info
    images, rewards = decode_and_score(process, reward, x, cond.prompts, trace=trace, method=METHOD)
    trace.record(step=process.num_steps, best_reward=toolkit.by_prompt(rewards, len(prompts)).max(1).values.tolist())
    return images, rewards, x
