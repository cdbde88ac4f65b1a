"""The particle methods of ``steer.wrap``, run from inside a pipeline's own ``__call__``.

Particles are the pipeline's batch: P prompts × K particles, prompt-major (diffusers repeats each
prompt's embeddings ``num_images_per_prompt`` times in a row, ``steer.toolkit``'s layout). Each method
is driven by two hooks: ``step(i, latents, record)`` from ``callback_on_step_end`` after step i (it
may return new latents: that is how particles are resampled and, in kernel mode, how the kernel's noise
is added), and ``finish(rewards)`` on the final particles' rewards (P·K,) -> what to keep.

FK (``steer.samplers.fk``, whose seam is reused: ``resolve(kind, num_steps, reward, **options)`` for the settings, ``initial_weights``,
``reweight`` for the λ schedule, potentials and ESS-triggered resampling (its step record carries the ancestors the lineage follows), ``final_weights``) at a
scoring step i scores x̂0(x_i) — the prediction from the model output the scheduler was given at step
i (``steer.wrapping.step``) — exactly the x̂0 ``steer.generate(method="fk")`` scores; adds log G_i to the
log-weights; resamples a prompt's particles when ESS < threshold·K (the kernel means of x_{i+1} are
reindexed by the ancestors); then draws x_{i+1} = mean + std·ε from the shared generator.
The draws come in steer's order (init noise by the pipeline, then per step: resampling uniforms,
kernel noise), so with the same generator, scheduler schedule and kernel the particles are steer's.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from steer import chain, kernels, toolkit
from steer.samplers import resampling as rs
from steer.scoring import score_latents

fk_sampler = importlib.import_module("steer.samplers.fk")  # the module (the package exports the function fk)


class BestOfN:
    """``n`` samples per prompt, the highest-reward final sample kept. ``noise_level`` None: the
    pipeline's own scheduler samples; > 0: steer's kernel at that level (DDIM η / flow SDE a)."""

    method = "best_of_n"

    def __init__(self, reward, *, n: int = 4, noise_level: Optional[float] = None, eta: Optional[float] = None):
        self.reward = reward
        self.particles = toolkit.integer(self.method, "n", n)
        level = eta if eta is not None else noise_level
        if eta is not None and noise_level is not None:
            raise ValueError(f"{self.method}: eta is an alias of noise_level; pass one of them, not both")
        self.level = None if level is None or level == 0 else toolkit.number(
            self.method, "noise_level", level, maximum=toolkit.MAX_NOISE_LEVEL)
        toolkit.check_reward(self.method, reward)

    def kernel_level(self, kind: Optional[str]) -> Optional[float]:
        return self.level

    def begin(self, prompts, kind, num_steps, generator, trace, decoder):
        self.generator, self.trace = generator, trace

    def step(self, i: int, latents: Tensor, record) -> Tensor:
        self.trace.record(step=i)
        if record.kernel is None:
            return latents
        return _sample(record.kernel, latents, self.generator)

    def finish(self, rewards: Tensor) -> dict:
        P = self.trace.num_prompts
        self.trace.record(step=len(self.trace.steps), best_reward=toolkit.by_prompt(rewards, P).max(1).values.tolist())
        return {}


class FK:
    """FK steering's SMC inside the pipeline call; options and defaults are ``steer.samplers.fk``'s."""

    method = "fk"

    def __init__(self, reward, *, particles: int = 4, potential: str = "max", lam: float = 10.0,
                 every: Optional[int] = None, t_start: Optional[int] = None, t_end: Optional[int] = None,
                 ess_threshold: float = 0.5, scheme: str = "systematic", noise_level=toolkit.STOCHASTIC,
                 eta: Optional[float] = None, guidance: float = 0.0):
        if guidance:
            raise ValueError("fk: guidance > 0 (the gradient-guided proposal) needs gradients through the denoiser, "
                             "which a wrapped pipeline call does not give; use steer.generate or guidance=0")
        self.reward = reward
        self.options = dict(particles=particles, potential=potential, lam=lam, every=every, t_start=t_start,
                            t_end=t_end, ess_threshold=ess_threshold, scheme=scheme, noise_level=noise_level,
                            eta=eta, guidance=0.0)
        self.particles = toolkit.integer(self.method, "particles", particles)
        for kind in ("diffusion", "flow"):  # early checks; step indices are checked again against the real S
            if eta is None or kind == "diffusion":
                self._settings(kind, max(1000, (t_end or 0) + 1, (t_start or 0) + 1))

    def _settings(self, kind: str, num_steps: int):
        return fk_sampler.resolve(kind, num_steps, self.reward, **self.options)

    def kernel_level(self, kind: str) -> float:
        return self._settings(kind, 1000).noise_level

    def begin(self, prompts, kind, num_steps, generator, trace, decoder):
        self.fk = self._settings(kind, num_steps)
        self.prompts, self.generator, self.trace, self.decoder = prompts, generator, trace, decoder
        P, K = trace.num_prompts, self.particles
        self.w = fk_sampler.initial_weights(P, self.fk)
        self.lineage = torch.arange(P * K)  # (P·K,) the initial particle each one descends from

    def step(self, i: int, latents: Tensor, record) -> Tensor:
        P, K = self.w.log_w.shape
        prop = chain.Proposal(record.pred, kernels.Gaussian(mean=latents.float(), std=record.kernel.std))
        info = {"step": i}
        if i in self.fk.steps:
            r = score_latents(self.decoder, self.reward, record.pred.x0, self.prompts, trace=self.trace,
                              method=self.method, step=i).reshape(P, K).cpu()
            move, self.w, step = fk_sampler.reweight(fk_sampler.Move(x=latents, prop=prop), self.w, r, self.fk,
                                                     self.generator)
            prop, self.lineage = move.prop, self.lineage[rs.flat_ancestors(step.ancestors)]
            info.update(step.trace_fields(), lineage=self.lineage.reshape(P, K).tolist())
        info["ess"] = rs.ess(self.w.log_w).tolist()
        self.trace.record(**info)
        return _sample(prop.kernel, latents, self.generator)

    def finish(self, rewards: Tensor) -> dict:
        r = rewards.reshape(self.w.log_w.shape).cpu()
        log_w, lam = fk_sampler.final_weights(self.w, r, self.fk)
        self.trace.record(step=len(self.trace.steps), ess=rs.ess(log_w).tolist(), best_reward=r.max(1).values.tolist(),
                          lam=lam.tolist())
        return {"log_weights": log_w, "lineage": self.lineage.reshape(log_w.shape)}


def _sample(kernel: kernels.Gaussian, latents: Tensor, generator) -> Tensor:
    """x_{i+1} ~ kernel, in the pipeline's latents dtype and device."""
    return chain.sample(kernel, generator).to(device=latents.device, dtype=latents.dtype)


# the methods that run inside a pipeline call, by their ``steer.catalog.METHODS`` name (aliases: ``catalog.ALIASES``)
METHODS = {"best_of_n": BestOfN, "fk": FK}
