"""Reward-gradient guidance: the kernel mean shifted along ∇_{x_t} r(decode(x̂0(x_t))) at every step
(Chung et al. 2023, "Diffusion Posterior Sampling for General Noisy Inverse Problems" (DPS); Bansal
et al. 2023, "Universal Guidance for Diffusion Models", forward guidance).

At step t the denoiser predicts x̂0(x_t); the reward of its decoded image is differentiated through
the decoder and the denoiser, g_t = ∇_{x_t} r(decode(x̂0(x_t))) (one forward + one backward), and
x_{t-1} ~ N(μ_t + s_t·g_t, σ_t²) with μ_t, σ_t the kernel's (DDIM with η for diffusion, the
Flow-GRPO SDE for flow, or the deterministic sampler at ``noise_level=0``). ``schedule`` sets s_t:

- ``"variance"``: s_t = scale·σ_t², the classifier-guidance / TDS form (the kernel then tilts p_t by
  exp(scale·r(x̂0)) to first order; FK's ``guidance`` proposal uses the same shift). Needs a
  stochastic kernel.
- ``"noise"``: s_t = scale·(1 − ᾱ_t) (diffusion) / scale·σ_t² of x_t = (1−σ)x0 + σε (flow): Universal
  guidance's noise-level weighting (its ε̂ = ε − s·√(1−ᾱ_t)·∇ℓ), applied to the mean.
- ``"constant"``: s_t = scale: DPS's step x_{t-1} = x'_{t-1} − ζ·∇ℓ with a fixed step size.

``grad_clip`` (off by default) caps the per-sample L2 norm of g_t before scaling: pixel rewards
differentiated through a VAE decoder (FLUX) give high-frequency gradients that show up as colourful
noise points at large scales; clipping bounds each step's shift.

Defaults (ours; neither paper has a reward-model setting to take them from): ``scale`` = 10 (FK's
λ = 10, ImageReward's scale), ``schedule="variance"``, no clipping, one chain per prompt (``n``),
the stochastic kernel (DDPM-like η = 1, as DPS's ancestral sampler; flow a = 0.7). Deviations: DPS
normalizes ζ by the measurement residual ‖y − A(x̂0)‖, which a reward has not; Universal guidance's
ε-space shift is applied as a mean shift, and its per-step self-recurrence and backward guidance
are not implemented. With ``n`` > 1 the highest-reward chain of each prompt is returned.
``scale=0`` is the plain sampler (the same draws as ``best_of_n`` with the same ``noise_level``).
Cost per prompt: n·S NFE, n·S backward passes (``trace.backward_calls`` counts one per step, as FK's
gradient proposal does) and n·(S+1) reward calls (n with ``scale=0``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from steer import chain, kernels, toolkit
from steer.budget import Budget
from steer.scoring import decode_and_score, score_latents
from steer.types import Result, StepInfo

METHOD = "reward_guidance"
SCHEDULES = ("variance", "noise", "constant")


def reward_guidance(process, reward, prompts: Sequence[str] | str, *, generator: Optional[torch.Generator] = None,
                    budget: Optional[Budget] = None, callback: Optional[Callable[[StepInfo], object]] = None,
                    scale: float = 10.0, schedule: str = "variance", grad_clip: Optional[float] = None, n: int = 1,
                    noise_level=toolkit.STOCHASTIC, eta: Optional[float] = None) -> Result:
    """Reward-gradient guidance (DPS, Chung et al. 2023; Universal guidance, Bansal et al. 2023): each
    step's kernel mean moves by s_t·∇_{x_t} r(decode(x̂0(x_t))), s_t = ``scale`` × the ``schedule``
    (``variance`` σ_t² | ``noise`` 1 − ᾱ_t | ``constant`` 1), the gradient's per-sample norm clipped
    to ``grad_clip`` if set. Needs a differentiable reward. Defaults: scale 10, ``variance``, no clip,
    ``n=1`` chain per prompt, η = 1 / flow a = 0.7. NFE per prompt: n·S (plus n·S backward passes)."""
    prompts = toolkit.prompt_list(METHOD, prompts)
    toolkit.check_reward(METHOD, reward, differentiable=True)
    scale = toolkit.number(METHOD, "scale", scale, maximum=toolkit.MAX_LAM)
    schedule = toolkit.choice(METHOD, "schedule", schedule, SCHEDULES)
    clip = None if grad_clip is None else toolkit.number(METHOD, "grad_clip", grad_clip, positive=True)
    n = toolkit.integer(METHOD, "n", n)
    level = toolkit.noise_level(process, METHOD, noise_level, eta)
    if schedule == "variance" and level == 0 and scale > 0:
        raise ValueError(f"{METHOD}: schedule='variance' scales by the kernel's variance, which noise_level=0 makes 0; "
                         f"use noise_level > 0 or schedule='noise' / 'constant'")
    S = process.num_steps
    trace = toolkit.plan(METHOD, len(prompts), budget, unit_nfe=S, nfe=n * S,
                         reward_calls=n * (S + 1) if scale > 0 else n, hint="lower n")
    core = _guided_steps(process, reward, prompts, n, scale, schedule, clip, level, generator, trace)
    images, rewards, latents = toolkit.drain(core, callback)
    return toolkit.from_candidates(process, prompts, trace, images, rewards, latents)


def step_size(process, i: int, kernel: kernels.Gaussian, scale: float, schedule: str) -> Tensor:
    """s_t of step ``i``: ``scale`` × σ_t² (``variance``), × the noise variance of x_t (``noise``: 1 − ᾱ_t,
    or σ_t² on flow) or × 1 (``constant``)."""
    if schedule == "variance":
        return scale * kernel.std.float() ** 2
    if schedule == "noise":
        sch = process.schedule
        var = 1 - sch.alphas_cumprod[i] if sch.kind == "diffusion" else sch.sigmas[i] ** 2
        return scale * var.float()
    return torch.tensor(float(scale))


def clip_rows(g: Tensor, max_norm: Optional[float]) -> Tensor:
    """Each row of ``g`` scaled down to L2 norm ≤ ``max_norm`` (unchanged when None)."""
    if max_norm is None:
        return g
    norm = g.flatten(1).norm(dim=1).view(-1, *[1] * (g.dim() - 1))
    return g * (max_norm / (norm + 1e-12)).clamp(max=1.0)


def _guided_steps(process, reward, prompts, n, scale, schedule, clip, level, generator, trace) -> Iterator[StepInfo]:
    """Core generator: yields after every step; returns (images, rewards, latents) flat (P·n, ...)."""
    P = len(prompts)
    cond = process.prepare(prompts).repeat(n)
    x = process.init_noise(P * n, generator)  # (P·n, *latent)
    for i in range(process.num_steps):
        if scale == 0:
            with torch.no_grad():
                prop = chain.propose(process, x, i, cond, noise_level=level, trace=trace)
            x = chain.sample(prop.kernel, generator)
            trace.record(step=i)
            yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"x0": prop.pred.x0})
            continue
        prop, r, g = _gradient(process, reward, x, i, cond, level, trace)
        g = clip_rows(g, clip)
        s = step_size(process, i, prop.kernel, scale, schedule).to(g.device)
        kernel = prop.kernel
        x = chain.sample(kernels.Gaussian(mean=kernel.mean + s * g, std=kernel.std), generator)
        trace.record(step=i, reward=r.tolist(), grad_norm=g.flatten(1).norm(dim=1).tolist(), step_size=float(s.max()))
        yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"x0": prop.pred.x0, "reward": r, "grad": g})
    images, rewards = decode_and_score(process, reward, x, cond.prompts, trace=trace, method=METHOD)
    trace.record(step=process.num_steps, best_reward=toolkit.by_prompt(rewards, P).max(1).values.tolist())
    return images, rewards, x


def _gradient(process, reward, x, i, cond, level, trace):
    """The step's proposal at x_i (detached), r(decode(x̂0(x_i))) (B,) and its gradient in x_i (B, ...)."""
    x_in = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        prop = chain.propose(process, x_in, i, cond, noise_level=level, trace=trace)
        r = score_latents(process, reward, prop.pred.x0, cond.prompts, trace=trace, method=METHOD, step=i, grad=True)
        if not r.requires_grad:
            raise RuntimeError(f"{METHOD}: no gradient reaches the latents through "
                               f"{getattr(process, 'name', 'the process')}'s denoiser, decode and the reward; "
                               f"reward guidance needs all three differentiable")
        (g,) = torch.autograd.grad(r.float().sum(), x_in)
    trace.add_backward(1)
    return prop.detach(), r.detach(), g.detach()
