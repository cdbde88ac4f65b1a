"""The run-wide options of ``steer.generate`` and ``steer generate``: one frozen record, checked once.

``RunOptions.check(...)`` validates and normalizes them before anything loads (numpy integers become ints,
dtype names ``torch.dtype``s) and names a bad value by its CLI flag when the CLI asks (``flags=True``),
by its keyword otherwise. Each field's metadata carries its flag; ``settings()`` gives the entries of
``trace.json``'s ``settings`` (the keys a ``--resume`` compares) and ``process_options()`` what a
``Process`` is built with.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Optional

MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed takes


def _flag(default, flag: Optional[str]):
    return field(default=default, metadata={"flag": flag})


@dataclass(frozen=True)
class RunOptions:
    """What every prompt of a run shares (the method's own options are the method's)."""

    seed: int = _flag(0, "--seed")
    steps: Optional[int] = _flag(None, "--steps")  # num_inference_steps
    guidance_scale: Optional[float] = _flag(None, "--guidance")
    height: Optional[int] = _flag(None, "--height")
    width: Optional[int] = _flag(None, "--width")
    negative_prompt: Optional[str] = _flag(None, "--negative-prompt")
    batch_size: Optional[int] = _flag(None, None)  # latents per denoiser call (Python only)
    nfe_budget: Optional[int] = _flag(None, "--nfe-budget")
    num_frames: Optional[int] = _flag(None, "--num-frames")
    device: Optional[str] = _flag(None, "--device")
    dtype: Any = _flag(None, "--dtype")  # a torch.dtype or None (the pipeline's own)

    @classmethod
    def flags(cls) -> dict[str, Optional[str]]:
        """Field -> its CLI flag (None: no flag)."""
        return {f.name: f.metadata["flag"] for f in fields(cls)}

    @classmethod
    def check(cls, *, flags: bool = False, **given) -> "RunOptions":
        """The options checked and normalized; a bad one is a one-line ``SteerError`` naming the limit or
        the fix (by its flag when ``flags``)."""
        from steer.errors import SteerError

        unknown = sorted(set(given) - set(cls.flags()))
        if unknown:
            raise TypeError(f"unknown run options {unknown}")
        o = cls(**given)
        name = (lambda f, py: cls.flags()[f] if flags else py)
        if isinstance(o.seed, bool) or not isinstance(o.seed, numbers.Integral) or not MIN_SEED <= o.seed <= MAX_SEED:
            raise SteerError(f"{name('seed', 'seed')} must be an integer (from -2**63 to 2**64 - 1), got {o.seed!r}")
        return cls(seed=int(o.seed), **_sizes(o, name), negative_prompt=o.negative_prompt,
                   nfe_budget=_budget(o.nfe_budget, name), device=_device(o.device, name), dtype=_dtype(o.dtype))

    def process_options(self) -> dict[str, Any]:
        """The keywords ``steer.api.resolve_process`` builds a ``Process`` with (device and dtype apart)."""
        return dict(num_inference_steps=self.steps, guidance_scale=self.guidance_scale, height=self.height,
                    width=self.width, negative_prompt=self.negative_prompt, batch_size=self.batch_size,
                    num_frames=self.num_frames)

    def settings(self) -> dict[str, Any]:
        """These options' entries in ``trace.json``'s ``settings`` (the keys are those of earlier runs)."""
        return {"seed": self.seed, "steps": self.steps, "guidance_scale": self.guidance_scale, "height": self.height,
                "width": self.width, "negative_prompt": self.negative_prompt, "nfe_budget": self.nfe_budget,
                "dtype": None if self.dtype is None else str(self.dtype), "num_frames": self.num_frames}


def _sizes(o: RunOptions, name) -> dict[str, Optional[int]]:
    from steer.pipelines import checks

    steps = checks.positive_int(name("steps", "num_inference_steps (steps)"), o.steps, maximum=checks.MAX_STEPS)
    guidance = checks.check_guidance(o.guidance_scale)
    height, width = (checks.positive_int(name(k, k), v, maximum=checks.MAX_SIDE)
                     for k, v in (("height", o.height), ("width", o.width)))
    batch = checks.positive_int("batch_size", o.batch_size, maximum=checks.MAX_BATCH)
    # num_frames is the video adapter's to check (its frame-count rule is the family's)
    return dict(steps=steps, guidance_scale=guidance, height=height, width=width, batch_size=batch,
                num_frames=o.num_frames)


def _budget(nfe_budget, name) -> Optional[int]:
    from steer import toolkit

    if nfe_budget is None:
        return None
    return toolkit.integer("generate", name("nfe_budget", "nfe_budget"), nfe_budget, maximum=None)


def _dtype(dtype):
    import torch

    from steer import io
    from steer.errors import SteerError

    if isinstance(dtype, str):
        return io.parse_dtype(dtype)
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise SteerError(f"dtype must be a torch.dtype or one of float16, bfloat16, float32, got {dtype!r}")
    return dtype


def _device(device, name):
    import torch

    from steer.errors import SteerError

    if device is None:
        return None
    flag = name("device", None)
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError):
        raise SteerError(f"{flag or 'device'} must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from None
    for kind, available, what in (("cuda", torch.cuda.is_available, "no CUDA device is"),
                                  ("mps", torch.backends.mps.is_available, "MPS is not")):
        if dev.type == kind and not available():
            asked = f"{flag} {device}" if flag else f"device {device!r}"
            fix = f"{flag} cpu" if flag else "device='cpu'"
            raise SteerError(f"{asked} asked for, but {what} available here; use {fix}")
    return device
