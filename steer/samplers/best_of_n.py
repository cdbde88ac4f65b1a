"""Best-of-N: N independent chains per prompt, the highest-reward sample kept.

The baseline every steering paper compares against (e.g. Singhal et al. 2025, §5; Ma et al. 2025,
"Inference-Time Scaling for Diffusion Models beyond Scaling Denoising Steps", random search).
For i.i.d. x¹..x^N ~ p and a continuous reward, the kept sample has density N·p(x)·F(r(x))^{N−1},
F the CDF of r(x) under p — not the tilted p(x)·exp(λ·r(x)); tests check exactly that.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from steer import kernels
from steer.budget import Budget
from steer.samplers import common
from steer.types import Result, StepInfo

METHOD = "best_of_n"


def best_of_n(process, reward, prompts: Sequence[str] | str, *, generator: Optional[torch.Generator] = None,
              budget: Optional[Budget] = None, callback: Optional[Callable[[StepInfo], object]] = None,
              n: int = 4, eta: Optional[float] = None, noise_level: Optional[float] = None,
              batch_size: Optional[int] = None) -> Result:
    """Best-of-N sampling: ``n`` chains per prompt run as one batch (chunked by ``batch_size``), each
    final image scored once, the best kept per prompt.

    Defaults: ``n=4``; the process' ordinary sampler, i.e. deterministic DDIM (``eta=0``) for
    diffusion and the Euler ODE (``noise_level=0``) for flow matching. NFE per prompt: n·S.
    ``Result.candidates``/``candidate_rewards`` hold all n samples per prompt.
    """
    prompts = common.prompt_list(METHOD, prompts)
    n = common.positive_int(METHOD, "n", n)
    common.check_reward(METHOD, reward)
    level = common.noise_level(process, METHOD, eta, noise_level, default_eta=0.0, default_level=0.0)
    S, P = process.num_steps, len(prompts)
    trace = common.new_trace(METHOD, P, budget, nfe=n * S, reward_calls=n, chain_nfe=S,
                             size_hint=f"lower n (at most {budget.nfe // S if budget and budget.nfe else n} fit)")
    core = _best_of_n_steps(process, reward, prompts, n, level, batch_size, generator, trace)
    images, rewards, latents = common.drain(core, callback)
    return common.make_result(prompts, images, rewards, latents, trace)


def _best_of_n_steps(process, reward, prompts, n, level, batch_size, generator, trace) -> Iterator[StepInfo]:
    """Core generator: yields after every denoising step, returns (images, rewards, latents) flat."""
    cond = process.prepare(prompts).repeat(n)
    x = process.init_noise(len(cond), generator)  # (P·n, *latent)
    with torch.no_grad():
        for i in range(process.num_steps):
            pred = common.predict(process, x, i, cond, trace, batch_size)
            x = kernels.sample(kernels.transition(process.schedule, i, x.float(), pred, level), generator)
            trace.record(step=i)
            yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"x0": pred.x0})
    images, rewards = common.decode_and_score(process, reward, x, cond.prompts, trace=trace, method=METHOD,
                                              step=None, batch_size=batch_size)
    trace.record(step=process.num_steps, best_reward=common.by_prompt(rewards, len(prompts)).max(1).values.tolist())
    return images, rewards, x
