"""Feynman-Kac steering: sequential Monte Carlo over the denoising chain (Singhal et al. 2025,
"A General Framework for Inference-time Scaling and Steering of Diffusion Models").

K particles per prompt follow the model's stochastic kernel M_s (DDIM with η for diffusion, the
Flow-GRPO SDE for flow matching). At scheduled steps s the particles' x̂0 predictions are decoded and
scored, r_s = r(decode(x̂0(x_s))), each particle's log-weight gains log G_s (``potentials.py``), and
the particles of a prompt are resampled when their effective sample size falls below
``ess_threshold``·K. The last potential divides out the earlier ones, so the weighted final
particles target p(x0)·exp(λ·r(x0)) for every potential.

Notation (code -> paper): ``x`` x_s; ``pred.x0`` x̂0(x_s); ``log_w`` log-weights log w_s (P, K);
``log_g`` log G_s; ``lam`` λ; ``particles`` K; ``ancestors`` a_s^k.

Defaults, from the paper's text-to-image setting (K = 4, λ = 10, the max potential, resampling
every 20 of 100 steps between steps 20 and 80, DDPM-like η = 1) with steps scaled to the schedule:
``every`` = t_start = S/5 and t_end = 4S/5. Deviations from the reference code: systematic
resampling by default (lower variance than its multinomial), ESS-adaptive resampling with threshold
0.5 whose skipped potentials carry over in the weights (the reference drops them), a running max
that starts at the first reward (the reference starts it at 0, clipping negative rewards).

Optional gradient-guided proposal (``guidance`` = γ > 0, off by default; TDS, Wu et al. 2023, and
DAS, Kim et al. 2025): the kernel mean is shifted by γ·λ·std²·∇_x r(decode(x̂0(x_s))) and the weights
gain log M_s(x') − log q_s(x'), so the target is unchanged. It needs a differentiable reward and
scores every step (one backward per step).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from steer import kernels
from steer.budget import Budget
from steer.samplers import common, potentials
from steer.samplers import resampling as rs
from steer.scoring import decode, score_images
from steer.types import Prediction, Result, StepInfo

METHOD = "fk"


def fk(process, reward, prompts: Sequence[str] | str, *, generator: Optional[torch.Generator] = None,
       budget: Optional[Budget] = None, callback: Optional[Callable[[StepInfo], object]] = None,
       particles: int = 4, potential: str = "max", lam: float = 10.0, every: Optional[int] = None,
       t_start: Optional[int] = None, t_end: Optional[int] = None, ess_threshold: float = 0.5,
       scheme: str = "systematic", eta: Optional[float] = None, noise_level: Optional[float] = None,
       guidance: float = 0.0, batch_size: Optional[int] = None) -> Result:
    """FK steering with ``particles`` per prompt; returns the highest-reward particle per prompt.

    ``potential``: ``max`` | ``difference`` | ``sum`` | ``immediate``; ``lam``: λ ≥ 0; rewards are
    evaluated at steps ``t_start, t_start+every, ... <= t_end`` (0-based step indices; defaults
    S/5, S/5, 4S/5) and at the end; a prompt's particles are resampled with ``scheme``
    (``systematic`` | ``stratified`` | ``multinomial`` | ``residual``) when ESS < ``ess_threshold``·K
    (``ess_threshold=1`` resamples at every scheduled step). ``eta`` (diffusion, default 1) or
    ``noise_level`` (flow, default 0.7) sets the kernel's noise. NFE per prompt: K·S.
    ``Result.candidates``/``candidate_rewards``/``log_weights`` hold the final weighted particles
    (P, K, ...): resampling them by ``log_weights`` gives samples of the tilted target.
    """
    prompts = common.prompt_list(METHOD, prompts)
    K = common.positive_int(METHOD, "particles", particles)
    lam = common.non_negative(METHOD, "lam", lam)
    potentials.check_potential(potential)
    resample = rs.get_scheme(scheme)
    thr = _threshold(ess_threshold)
    gamma = common.non_negative(METHOD, "guidance", guidance)
    common.check_reward(METHOD, reward, differentiable=gamma > 0)
    level = common.noise_level(process, METHOD, eta, noise_level, default_eta=1.0, default_level=0.7)
    if level == 0:
        raise ValueError(f"{METHOD}: resampled particles need a stochastic kernel; eta/noise_level=0 keeps copies "
                         f"identical. Use eta>0 (diffusion) or noise_level>0 (flow), e.g. the defaults 1.0 / 0.7")
    S = process.num_steps
    steps = resampling_steps(S, every, t_start, t_end)
    scored = S if gamma > 0 else len(steps)
    trace = common.new_trace(METHOD, len(prompts), budget, nfe=K * S, reward_calls=K * (scored + 1),
                             chain_nfe=S, size_hint="use fewer particles")
    core = _fk_steps(process, reward, prompts, K, potential, lam, steps, thr, resample, level, gamma,
                     batch_size, generator, trace)
    images, rewards, latents, log_w = common.drain(core, callback)
    return common.make_result(prompts, images, rewards, latents, trace, log_weights=log_w)


def resampling_steps(S: int, every: Optional[int], t_start: Optional[int], t_end: Optional[int]) -> list[int]:
    """The 0-based steps where rewards are evaluated: t_start, t_start + every, ..., <= t_end."""
    every = max(1, round(S / 5)) if every is None else common.positive_int(METHOD, "every", every)
    t_start = round(S / 5) if t_start is None else t_start
    t_end = round(4 * S / 5) if t_end is None else t_end
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= S - 1:
            raise ValueError(f"{METHOD}: {name} must be a step index in 0..{S - 1} (num_inference_steps={S}), got {v!r}")
    if t_start > t_end:
        raise ValueError(f"{METHOD}: t_start={t_start} is after t_end={t_end}; pass t_start <= t_end")
    return list(range(t_start, t_end + 1, every))


def _threshold(ess_threshold) -> float:
    thr = common.non_negative(METHOD, "ess_threshold", ess_threshold)
    if thr > 1:
        raise ValueError(f"{METHOD}: ess_threshold is a fraction of the particles in [0, 1], got {ess_threshold}")
    return thr


def _fk_steps(process, reward, prompts, K, potential, lam, steps, thr, resample, level, gamma, batch_size,
              generator, trace) -> Iterator[StepInfo]:
    """Core generator: yields after every step; returns (images, rewards, latents) flat and log_w (P, K)."""
    P, scheduled = len(prompts), set(steps)
    cond = process.prepare(prompts).repeat(K)
    x = process.init_noise(P * K, generator)  # (P·K, *latent)
    log_w = torch.zeros(P, K, device=x.device)  # (P, K)
    state = potentials.PotentialState()
    for i in range(process.num_steps):
        pred, r, grad = _predict(process, reward, x, i, cond, trace, batch_size, gamma > 0, lam)
        info = {"step": i}
        if i in scheduled:
            if r is None:
                _, r = common.decode_and_score(process, reward, pred.x0, cond.prompts, trace=trace, method=METHOD,
                                               step=i, batch_size=batch_size)
            log_g, state = potentials.intermediate(potential, lam, r.reshape(P, K).to(log_w.device), state)
            log_w = log_w + log_g
            x, pred, grad, log_w, state, info = _maybe_resample(x, pred, grad, log_w, state, thr, resample,
                                                                generator, info)
            info["best_reward"] = r.reshape(P, K).max(1).values.tolist()
        x, log_w = _move(process, i, x, pred, grad, log_w, level, gamma * lam, generator)
        info["ess"] = rs.ess(log_w).tolist()
        trace.record(**info)
        yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"x0": pred.x0, "log_w": log_w, **info})
    images, rewards = common.decode_and_score(process, reward, x, cond.prompts, trace=trace, method=METHOD,
                                              step=None, batch_size=batch_size)
    log_w = rs.normalize(log_w + potentials.final(lam, rewards.reshape(P, K).to(log_w.device), state))
    trace.record(step=process.num_steps, ess=rs.ess(log_w).tolist(),
                 best_reward=rewards.reshape(P, K).max(1).values.tolist())
    return images, rewards, x, log_w


def _maybe_resample(x, pred, grad, log_w, state, thr, resample, generator, info):
    """Resample the prompts whose ESS < thr·K (all of them when thr = 1); the others keep their weights."""
    P, K = log_w.shape
    ess = rs.ess(log_w)  # (P,)
    need = torch.ones_like(ess, dtype=torch.bool) if thr >= 1 else ess < thr * K  # (P,)
    info.update(ess_before=ess.tolist(), resampled=need.tolist())
    if not bool(need.any()):
        return x, pred, grad, log_w, state, info
    keep = torch.arange(K, device=log_w.device).expand(P, K)
    ancestors = torch.where(need[:, None], resample(log_w, K, generator), keep)  # (P, K)
    flat = rs.flat_ancestors(ancestors)  # (P·K,)
    x, x0, eps, out, grad = rs.reindex(flat, x, pred.x0, pred.eps, pred.output, grad)
    log_w = torch.where(need[:, None], torch.zeros_like(log_w), log_w)
    return x, Prediction(output=out, x0=x0, eps=eps), grad, log_w, state.take(ancestors), info


def _predict(process, reward, x, i, cond, trace, batch_size, guided: bool, lam: float):
    """The step's prediction; with guidance also the reward of x̂0 (B,) and its gradient in x (B, ...)."""
    if not guided:
        with torch.no_grad():
            return common.predict(process, x, i, cond, trace, batch_size), None, None
    x_in = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        pred = common.predict(process, x_in, i, cond, trace, batch_size)
        r = score_images(reward, decode(process, pred.x0, trace), cond.prompts, trace=trace, method=METHOD, step=i)
        if not r.requires_grad:
            raise RuntimeError(f"{METHOD}: guidance needs gradients through {getattr(process, 'name', 'the process')}'s "
                               f"denoiser, decode and the reward, but none reached the latents; use guidance=0")
        (grad,) = torch.autograd.grad(r.sum(), x_in)
    trace.add_backward(1)
    detached = Prediction(output=pred.output.detach(), x0=pred.x0.detach(), eps=pred.eps.detach())
    return detached, r.detach(), grad.detach()


def _move(process, i, x, pred, grad, log_w, level, shift_scale, generator):
    """x_{s+1} from the kernel M_s, or from the guided proposal with the density ratio in the weights."""
    g = kernels.transition(process.schedule, i, x.float(), pred, level)
    if grad is None or g.deterministic:
        return kernels.sample(g, generator), log_w
    proposal = kernels.Gaussian(mean=g.mean + shift_scale * g.std**2 * grad, std=g.std)
    x_next = kernels.sample(proposal, generator)
    ratio = kernels.log_prob(g, x_next, reduce="sum") - kernels.log_prob(proposal, x_next, reduce="sum")  # (P·K,)
    return x_next, log_w + ratio.reshape(log_w.shape).to(log_w.device)
