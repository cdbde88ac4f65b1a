"""The scheduler tap of ``steer.wrap``: ``pipe.scheduler.step`` wrapped for the duration of one call.

The pipeline's loop calls ``scheduler.step(model_output, timestep, sample)`` once per step with the
*guided* model output in the scheduler's own parameterization (e.g. Lumina2 passes its negated
velocity). The tap sees exactly that, so at step i it knows x_i (``sample``), the model output and
the scheduler's noise levels, and forms what steer's chain forms (``steer.kernels``):

- x̂0(x_i): diffusion ``to_prediction`` with ᾱ_t = ``alphas_cumprod[t]`` and the scheduler's
  ``prediction_type`` (clipped like DDIM when ``clip_sample``); flow x̂0 = x_i − σ_i·v with
  σ_i = ``sigmas[step_index]``.
- the kernel N(mean, std²) of x_{i+1}: DDIM with η (ᾱ_{t_{i+1}} the next timestep's, after the last
  step ``steer.pipelines.ddim_schedule.after_last``, the rule steer's own DDIM chain uses) or the Flow-GRPO
  SDE with level a on the scheduler's own σ's.

In *observe* mode (``noise_level`` 0 on best-of-N) the scheduler's result is returned untouched: the
pipeline samples with its own scheduler. In *kernel* mode (FK, or best-of-N with ``noise_level`` > 0)
the original ``step`` still runs (so the scheduler's counters advance as usual) but its sample is
replaced by the kernel's **mean**; the method's ``callback_on_step_end`` then resamples the rows and
adds std·ε (``steer.wrapping.methods``). Every call counts ``len(sample)`` NFE (a CFG pair counts once).
The tap is an instance attribute shadowing the class method, deleted again on exit, also on errors.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from steer import kernels
from steer.errors import SteerError
from steer.pipelines.ddim_schedule import after_last
from steer.types import Prediction, Schedule


def chain_kind(scheduler) -> Optional[str]:
    """``"flow"`` (σ-schedules: flow matching), ``"diffusion"`` (ᾱ-schedules with unit-variance latents),
    or None when steer does not know the scheduler's noise levels (e.g. Euler's σ-scaled latents)."""
    cfg = scheduler.config
    if "FlowMatch" in type(scheduler).__name__ or cfg.get("prediction_type") == "flow_prediction" \
            or cfg.get("use_flow_sigmas", False):
        return "flow" if hasattr(scheduler, "sigmas") and hasattr(scheduler, "step_index") else None
    if hasattr(scheduler, "alphas_cumprod") and float(getattr(scheduler, "init_noise_sigma", 1.0)) == 1.0 \
            and cfg.get("prediction_type") in ("epsilon", "v_prediction", "sample"):
        return "diffusion"
    return None


def check_kernel_scheduler(scheduler, method: str) -> str:
    """The scheduler's kind, or a one-line error naming the scheduler to use instead."""
    kind = chain_kind(scheduler)
    name = type(scheduler).__name__
    if kind is None:
        raise SteerError(f"steer.wrap({method}): {name} has no noise levels steer can read (ᾱ with unit-variance "
                         f"latents, or flow σ's); set pipe.scheduler = "
                         f"DDIMScheduler.from_config(pipe.scheduler.config) (diffusion) or "
                         f"FlowMatchEulerDiscreteScheduler.from_config(...) (flow)")
    if getattr(scheduler, "order", 1) != 1:
        raise SteerError(f"steer.wrap({method}): {name} is a order-{scheduler.order} solver (several step() calls per "
                         f"step); use a first-order scheduler such as DDIMScheduler or FlowMatchEulerDiscreteScheduler")
    if scheduler.config.get("thresholding", False):
        raise SteerError(f"steer.wrap({method}): dynamic thresholding is not supported; "
                         f"pipe.scheduler.register_to_config(thresholding=False)")
    return kind


@dataclass(frozen=True)
class StepRecord:
    """What the tap saw at step i: x_i (float32), the prediction and the kernel of x_{i+1}."""

    step: int
    x: Tensor
    pred: Optional[Prediction] = None
    kernel: Optional[kernels.Gaussian] = None


class StepTap:
    """Wraps ``scheduler.step``; ``records[-1]`` is the last step seen. ``noise_level`` None: observe."""

    def __init__(self, scheduler, kind: Optional[str], noise_level: Optional[float], trace):
        self.scheduler, self.kind, self.level, self.trace = scheduler, kind, noise_level, trace
        self.records: list[StepRecord] = []

    @contextlib.contextmanager
    def installed(self):
        sched = self.scheduler
        had = "step" in vars(sched)
        previous = vars(sched).get("step")
        original = sched.step

        @functools.wraps(original)  # keeps the signature: pipelines inspect it for eta / generator
        def step(model_output, timestep, sample, *args, **kwargs):
            out = original(model_output, timestep, sample, *args, **kwargs)
            return self._after(out, model_output, timestep, sample)

        sched.step = step
        try:
            yield self
        finally:
            if had:
                sched.step = previous
            else:
                del sched.step

    def _after(self, out, model_output: Tensor, timestep, sample: Tensor):
        i = len(self.records)
        self.trace.add_nfe(sample.shape[0])
        if self.level is None:
            self.records.append(StepRecord(i, sample))
            return out
        schedule, j = self._schedule(timestep)
        x = sample.float()
        pred = kernels.to_prediction(schedule, j, x, model_output)
        kernel = kernels.transition(schedule, j, x, pred, self.level)
        self.records.append(StepRecord(i, x, pred, kernel))
        mean = kernel.mean.to(sample.dtype)
        if isinstance(out, tuple):
            return (mean, *out[1:])
        return replace(out, prev_sample=mean)

    def _schedule(self, timestep) -> tuple[Schedule, int]:
        """The scheduler's noise levels as a steer ``Schedule`` and the index of this step in it."""
        s = self.scheduler
        if self.kind == "flow":
            sigmas = s.sigmas.float().cpu()  # (S+1,)
            j = int(s.step_index) - 1  # the original step() has advanced it
            return Schedule(kind="flow", timesteps=torch.arange(len(sigmas) - 1), prediction_type="flow",
                            sigmas=sigmas), j
        t = int(timestep)
        ts = [int(v) for v in s.timesteps]
        pos = ts.index(t)
        ac = s.alphas_cumprod.float().cpu()
        if pos + 1 < len(ts):
            a_next = ac[ts[pos + 1]]
        else:
            a_next = after_last(ac, t, s.config.num_train_timesteps, s.num_inference_steps,
                                getattr(s, "final_alpha_cumprod", 1.0))
        clip = float(s.config.clip_sample_range) if s.config.get("clip_sample", False) else None
        levels = torch.stack([ac[t], a_next.reshape(())])  # (2,)
        return Schedule(kind="diffusion", timesteps=torch.tensor([t]), prediction_type=s.config.prediction_type,
                        alphas_cumprod=levels, clip_sample=clip), 0


def check_tap_ran(tap: StepTap, i: int, pipe) -> StepRecord:
    """The record of step ``i``, or a one-line error when the pipeline stepped without its scheduler."""
    if len(tap.records) != i + 1:
        raise SteerError(f"steer.wrap: {type(pipe).__name__} called scheduler.step {len(tap.records)} times by step "
                         f"{i + 1}; it does not step through pipe.scheduler once per step, so it cannot be steered")
    return tap.records[-1]
