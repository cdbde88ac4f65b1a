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
``every`` = t_start = S/5 and t_end = 4S/5 (at most S − 1, so 1–4-step models are steered too). Deviations from the reference code: systematic
resampling by default (lower variance than its multinomial), ESS-adaptive resampling with threshold
0.5 whose skipped potentials carry over in the weights (the reference drops them), a running max
that starts at the first reward (the reference starts it at 0, clipping negative rewards).

Scale-free tilt (``potential="tempered"``, ours, after adaptive tempering in SMC samplers and DAS,
Kim et al. 2025; ``tempering.py``): λ_s rises at each scoring step to the largest value ≤ ``lam``
at which the reweighted particles keep an ESS of ``ess_threshold``·K, the difference potential
carries the moving λ, and the particles are resampled at every scoring step. With ``lam=inf`` the
method is invariant to an affine change of the reward (λ = 10 is tuned to ImageReward's ±2
scale; a logit-scaled CLIP reward with spreads of several units puts all weight on one particle
in one reweighting). The final target is p(x0)·exp(λ_final·r(x0)), λ_final in
``trace.steps[-1]["lam"]`` (every scoring step records its λ).

Optional gradient-guided proposal (``guidance`` = γ > 0, off by default; TDS, Wu et al. 2023, and
DAS, Kim et al. 2025): the kernel mean is shifted by γ·λ·std²·∇_x r(decode(x̂0(x_s))) and the weights
gain log M_s(x') − log q_s(x'), so the target is unchanged. It needs a differentiable reward and
scores every step (one backward per step).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from steer import chain, kernels, toolkit
from steer.budget import Budget
from steer.samplers import potentials, tempering
from steer.samplers import resampling as rs
from steer.scoring import decode_and_score, score_latents
from steer.types import Result, StepInfo

METHOD = "fk"


@dataclass(frozen=True)
class Settings:
    """FK's resolved knobs: K ``particles``, λ ``lam``, G_s by ``potential``, the scored ``steps``,
    resampling by ``resample`` when ESS < ``ess_threshold``·K, the kernel's ``noise_level`` and the
    proposal's gradient ``guidance`` γ."""

    particles: int
    potential: str
    lam: float
    steps: frozenset
    ess_threshold: float
    resample: Callable
    noise_level: float
    guidance: float


@dataclass(frozen=True)
class Weights:
    """The particles' log-weights log w_s (P, K), the potential's running state and the tilt λ_s
    reached per prompt (P,) (constant λ except with the ``tempered`` potential)."""

    log_w: Tensor
    state: potentials.PotentialState
    lam: Tensor


@dataclass(frozen=True)
class Move:
    """What step s knows about each particle (P·K rows): x_s, the kernel's proposal, and with guidance
    the reward of x̂0(x_s) and its gradient in x_s."""

    x: Tensor
    prop: chain.Proposal
    reward: Optional[Tensor] = None
    grad: Optional[Tensor] = None

    def take(self, flat: Tensor) -> "Move":
        x, r, grad = rs.reindex(flat, self.x, self.reward, self.grad)
        return Move(x=x, prop=self.prop.take(flat), reward=r, grad=grad)


def fk(process, reward, prompts: Sequence[str] | str, *, generator: Optional[torch.Generator] = None,
       budget: Optional[Budget] = None, callback: Optional[Callable[[StepInfo], object]] = None,
       particles: int = 4, potential: str = "max", lam: float = 10.0, every: Optional[int] = None,
       t_start: Optional[int] = None, t_end: Optional[int] = None, ess_threshold: float = 0.5,
       scheme: str = "systematic", noise_level=toolkit.STOCHASTIC, eta: Optional[float] = None,
       guidance: float = 0.0) -> Result:
    """FK steering with ``particles`` per prompt; returns the highest-reward particle per prompt.

    ``potential``: ``max`` | ``difference`` | ``sum`` | ``immediate`` | ``tempered`` (adaptive λ up to
    ``lam``, which may then be ``inf``; see the module docstring); ``lam``: λ ≥ 0; rewards are
    evaluated at steps ``t_start, t_start+every, ... <= t_end`` (0-based step indices; defaults
    S/5, S/5, 4S/5) and at the end; a prompt's particles are resampled with ``scheme``
    (``systematic`` | ``stratified`` | ``multinomial`` | ``residual``) when ESS < ``ess_threshold``·K
    (``ess_threshold=1`` resamples at every scheduled step). ``noise_level`` (alias ``eta`` on
    diffusion; default η = 1 / flow a = 0.7) sets the kernel's noise. NFE per prompt: K·S.
    ``Result.candidates``/``candidate_rewards``/``log_weights`` hold the final weighted particles
    (P, K, ...): resampling them by ``log_weights`` gives samples of the tilted target.
    """
    prompts = toolkit.prompt_list(METHOD, prompts)
    settings = resolve(process.schedule.kind, process.num_steps, reward, particles=particles, potential=potential,
                       lam=lam, every=every, t_start=t_start, t_end=t_end, ess_threshold=ess_threshold, scheme=scheme,
                       noise_level=noise_level, eta=eta, guidance=guidance)
    K, S = settings.particles, process.num_steps
    scored = S if settings.guidance > 0 else len(settings.steps)
    trace = toolkit.plan(METHOD, len(prompts), budget, unit_nfe=S, nfe=K * S, reward_calls=K * (scored + 1),
                         hint="use fewer particles")
    images, rewards, latents, log_w = toolkit.drain(_fk_steps(process, reward, prompts, settings, generator, trace),
                                                    callback)
    return toolkit.from_candidates(process, prompts, trace, images, rewards, latents, log_weights=log_w)


def resolve(kind: str, num_steps: int, reward, *, particles, potential, lam, every, t_start, t_end, ess_threshold,
            scheme, noise_level, eta, guidance) -> Settings:
    """FK's options (the keywords of ``fk``) checked and resolved for a chain of ``kind`` (``"diffusion"`` /
    ``"flow"``) and ``num_steps`` steps; the seam ``steer.wrap``'s FK shares with this loop, as are
    ``initial_weights``, ``reweight`` and ``final_weights``."""
    K = toolkit.integer(METHOD, "particles", particles)
    toolkit.choice(METHOD, "potential", potential, potentials.POTENTIALS)
    lam = toolkit.number(METHOD, "lam", lam, allow_inf=potential == "tempered", maximum=toolkit.MAX_LAM)
    resample = rs.get_scheme(toolkit.choice(METHOD, "resampling scheme", scheme, rs.SCHEMES))
    thr = toolkit.number(METHOD, "ess_threshold", ess_threshold)
    if thr > 1:
        raise ValueError(f"{METHOD}: ess_threshold is a fraction of the particles in [0, 1], got {ess_threshold}")
    gamma = toolkit.number(METHOD, "guidance", guidance, maximum=toolkit.MAX_LAM)
    toolkit.check_reward(METHOD, reward, differentiable=gamma > 0)
    level = toolkit.noise_level(kind, METHOD, noise_level, eta)
    if level == 0:
        raise ValueError(f"{METHOD}: resampled particles need a stochastic kernel; eta/noise_level=0 keeps copies "
                         f"identical. Use eta>0 (diffusion) or noise_level>0 (flow), e.g. the defaults 1.0 / 0.7")
    steps = frozenset(resampling_steps(num_steps, every, t_start, t_end))
    return Settings(K, potential, lam, steps, thr, resample, level, gamma)


def resampling_steps(S: int, every: Optional[int], t_start: Optional[int], t_end: Optional[int]) -> list[int]:
    """The 0-based steps where rewards are evaluated: t_start, t_start + every, ..., <= t_end."""
    every = max(1, round(S / 5)) if every is None else toolkit.integer(METHOD, "every", every)
    t_end = min(round(4 * S / 5), S - 1) if t_end is None else t_end
    t_start = min(round(S / 5), t_end if isinstance(t_end, int) else 0) if t_start is None else t_start
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= S - 1:
            raise ValueError(f"{METHOD}: {name} must be a step index in 0..{S - 1} (num_inference_steps={S}), got {v!r}")
    if t_start > t_end:
        raise ValueError(f"{METHOD}: t_start={t_start} is after t_end={t_end}; pass t_start <= t_end")
    return list(range(t_start, t_end + 1, every))


def _fk_steps(process, reward, prompts, fk: Settings, generator, trace) -> Iterator[StepInfo]:
    """Core generator: yields after every step; returns (images, rewards, latents) flat and log_w (P, K)."""
    P, K = len(prompts), fk.particles
    cond = process.prepare(prompts).repeat(K)
    x = process.init_noise(P * K, generator)  # (P·K, *latent)
    w = initial_weights(P, fk, x.device)
    for i in range(process.num_steps):
        move = _propose(process, reward, x, i, cond, fk, trace)
        info = {"step": i}
        if i in fk.steps:
            r = move.reward
            if r is None:
                r = score_latents(process, reward, move.prop.pred.x0, cond.prompts, trace=trace, method=METHOD,
                                  step=i)
            move, w, record = reweight(move, w, r.reshape(P, K).to(w.log_w.device), fk, generator)
            info.update(record.trace_fields())
        x, w = _move(move, w, fk.guidance * fk.lam, generator)
        info["ess"] = rs.ess(w.log_w).tolist()
        trace.record(**info)
        yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"x0": move.prop.pred.x0, "log_w": w.log_w, **info})
    images, rewards = decode_and_score(process, reward, x, cond.prompts, trace=trace, method=METHOD)
    r = rewards.reshape(P, K).to(w.log_w.device)
    log_w, lam = final_weights(w, r, fk)  # λ_final: the final target is p(x0)·exp(λ_final·r(x0))
    trace.record(step=process.num_steps, ess=rs.ess(log_w).tolist(), best_reward=r.max(1).values.tolist(),
                 lam=lam.tolist())
    return images, rewards, x, log_w


def initial_weights(num_prompts: int, fk: Settings, device=None) -> Weights:
    """Uniform log-weights (P, K), an empty potential state, λ_0 (0 when tempered, else ``lam``)."""
    lam0 = 0.0 if fk.potential == "tempered" else fk.lam
    return Weights(torch.zeros(num_prompts, fk.particles, device=device), potentials.PotentialState(),
                   torch.full((num_prompts,), lam0, device=device))


def reweight(move: Move, w: Weights, r: Tensor, fk: Settings, generator) -> tuple[Move, Weights, "StepRecord"]:
    """One scoring step s on rewards r_s (P, K): λ_s, log w_s += log G_s, resampling where ESS is low;
    returns the moved particles, their weights and the step's record."""
    lam = _tilt(w, r, fk)
    log_g, state = potentials.intermediate(fk.potential, lam[:, None], r, w.state)
    move, w, ess, need, ancestors = _maybe_resample(move, Weights(w.log_w + log_g, state, lam), fk, generator)
    return move, w, StepRecord(ess, need, ancestors, r.max(1).values, lam)


@dataclass(frozen=True)
class StepRecord:
    """What one scoring step did, per prompt (as blackjax's ``SMCInfo``): the ESS before resampling (P,),
    which prompts were resampled (P,), the ancestors a_s (P, K) (k itself where not resampled), the best
    reward (P,) and λ_s (P,)."""

    ess_before: Tensor
    resampled: Tensor
    ancestors: Tensor
    best_reward: Tensor
    lam: Tensor

    def trace_fields(self) -> dict:
        """The step's ``trace.json`` fields (the ancestors are not traced)."""
        return {"ess_before": self.ess_before.tolist(), "resampled": self.resampled.tolist(),
                "best_reward": self.best_reward.tolist(), "lam": self.lam.tolist()}


def final_weights(w: Weights, r: Tensor, fk: Settings) -> tuple[Tensor, Tensor]:
    """The final particles' normalized log-weights (P, K) on their rewards r (P, K), and λ_final (P,):
    the weighted particles target p(x0)·exp(λ_final·r(x0))."""
    lam = _tilt(w, r, fk)
    return rs.normalize(w.log_w + potentials.final(lam[:, None], r, w.state)), lam


def _tilt(w: Weights, r: Tensor, fk: Settings) -> Tensor:
    """λ at this scoring step (P,): fixed, or the tempered choice (``tempering.next_lambda``)."""
    if fk.potential != "tempered":
        return w.lam
    base = torch.zeros_like(r) if w.state.log_prod is None else w.state.log_prod
    return tempering.next_lambda(w.log_w, r, base, w.lam, fk.lam, fk.ess_threshold).to(r.device)


def _maybe_resample(move: Move, w: Weights, fk: Settings, generator):
    """Resample the prompts whose ESS < threshold·K (all of them when the threshold is 1); the others
    keep their weights. Returns (move, weights, ESS before (P,), resampled (P,), ancestors (P, K))."""
    P, K = w.log_w.shape
    ess = rs.ess(w.log_w)  # (P,)
    always = fk.ess_threshold >= 1 or fk.potential == "tempered"
    need = torch.ones_like(ess, dtype=torch.bool) if always else ess < fk.ess_threshold * K  # (P,)
    keep = torch.arange(K, device=w.log_w.device).expand(P, K)
    if not bool(need.any()):
        return move, w, ess, need, keep
    ancestors = torch.where(need[:, None], fk.resample(w.log_w, K, generator), keep)  # (P, K)
    log_w = torch.where(need[:, None], torch.zeros_like(w.log_w), w.log_w)
    return move.take(rs.flat_ancestors(ancestors)), Weights(log_w, w.state.take(ancestors), w.lam), ess, need, ancestors


def _propose(process, reward, x, i, cond, fk: Settings, trace) -> Move:
    """The step's proposal; with guidance also the reward of x̂0 (B,) and its gradient in x (B, ...)."""
    if fk.guidance == 0:
        with torch.no_grad():
            return Move(x=x, prop=chain.propose(process, x, i, cond, noise_level=fk.noise_level, trace=trace))
    x_in = x.detach().float().requires_grad_(True)
    with torch.enable_grad():
        prop = chain.propose(process, x_in, i, cond, noise_level=fk.noise_level, trace=trace)
        r = score_latents(process, reward, prop.pred.x0, cond.prompts, trace=trace, method=METHOD, step=i, grad=True)
        if not r.requires_grad:
            raise RuntimeError(f"{METHOD}: guidance needs gradients through {getattr(process, 'name', 'the process')}'s "
                               f"denoiser, decode and the reward, but none reached the latents; use guidance=0")
        (grad,) = torch.autograd.grad(r.sum(), x_in)
    trace.add_backward(1)
    return Move(x=x, prop=prop.detach(), reward=r.detach(), grad=grad.detach())


def _move(move: Move, w: Weights, shift_scale: float, generator) -> tuple[Tensor, Weights]:
    """x_{s+1} from the kernel M_s, or from the guided proposal with the density ratio in the weights."""
    g = move.prop.kernel
    if move.grad is None or g.deterministic:
        return chain.sample(g, generator), w
    proposal = kernels.Gaussian(mean=g.mean + shift_scale * g.std**2 * move.grad, std=g.std)
    x_next = chain.sample(proposal, generator)
    ratio = kernels.log_prob(g, x_next, reduce="sum") - kernels.log_prob(proposal, x_next, reduce="sum")  # (P·K,)
    return x_next, replace(w, log_w=w.log_w + ratio.reshape(w.log_w.shape).to(w.log_w.device))
