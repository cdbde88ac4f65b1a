"""``steer.generate``: resolve names, validate, dispatch. No algorithm lives here."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from steer.budget import Budget
from steer.catalog import ALIASES, METHODS, check_options, method_options, resolve_method  # noqa: F401
from steer.errors import SteerError, suggest  # noqa: F401
from steer.types import Result


def resolve_reward(reward, device=None, dtype=None):
    """A ``Reward`` from a spec string, a ``Reward``, or a callable (images, prompts) -> Tensor."""
    from steer.rewards.base import Reward

    if isinstance(reward, Reward):
        return reward
    from steer import rewards as rewards_pkg

    if isinstance(reward, str):
        return rewards_pkg.load(reward, device=device, dtype=dtype)
    if callable(reward):
        return rewards_pkg.as_reward(reward)
    raise SteerError(f"reward must be a spec string such as 'hps' or 'hps=1,clip=0.5', a Reward, or a callable "
                     f"(images, prompts) -> Tensor; got {type(reward).__name__}")


def resolve_process(pipe, *, device=None, dtype=None, **process_options):
    """A ``Process`` from a pipeline object, a model id / local path, or a ``Process``."""
    from steer import pipelines

    process_options = {k: v for k, v in process_options.items() if v is not None}
    if isinstance(pipe, pipelines.Process):
        if process_options:
            raise SteerError(f"{sorted(process_options)} cannot be changed on an existing Process; "
                             f"build the process with them (steer.pipelines.from_pipe(pipe, ...))")
        return pipe
    if isinstance(pipe, str):
        return pipelines.load(pipe, device=device, dtype=dtype, **process_options)
    if pipe is None:
        from steer.zoo import default_model, default_options

        options = {**default_options(device), **process_options}
        return pipelines.from_pipe(default_model(device=device, dtype=dtype), **options)
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipelines.from_pipe(pipe, **process_options)


def normalize_prompts(prompt: Union[str, Sequence[str]]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise SteerError("no prompts given: pass a string or a non-empty list of strings")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise SteerError(f"prompts must be strings, got {type(bad[0]).__name__}")
    return prompts


def default_reward(pipe) -> str:
    """The reward when none is named: the shipped ``shapes-clip`` for the embedded model (``pipe`` None),
    else ``hps``."""
    return "shapes-clip" if pipe is None else "hps"


def generate(pipe, prompt: Union[str, Sequence[str]], *, method: Union[str, Callable] = "fk", reward=None,
             seed: int = 0, steps: Optional[int] = None, guidance_scale: Optional[float] = None,
             height: Optional[int] = None, width: Optional[int] = None, negative_prompt: Optional[str] = None,
             batch_size: Optional[int] = None, device=None, dtype=None, nfe_budget: Optional[int] = None,
             callback: Optional[Callable] = None, **options) -> Result:
    """Generate one reward-steered image per prompt.

    ``pipe``: a diffusers pipeline, a model id / local path, a ``steer.pipelines.Process``, or
    ``None`` for the project's embedded default model. ``method``: one of ``steer.api.METHODS``
    (aliases: ``bon``, ``dts*``). ``reward``: a spec (``"hps"``, ``"hps=1,clip=0.5"``), a ``Reward``
    or a callable (default ``default_reward(pipe)``: ``shapes-clip`` on the embedded model, else
    ``hps``). Method options pass through by keyword; ``nfe_budget`` caps denoiser calls per prompt for
    every method.
    """
    reward = default_reward(pipe) if reward is None else reward
    prompts = normalize_prompts(prompt)
    fn = resolve_method(method)
    name = method if isinstance(method, str) else getattr(fn, "__name__", "method")
    check_options(fn, options, name)
    process = resolve_process(pipe, device=device, dtype=dtype, num_inference_steps=steps,
                              guidance_scale=guidance_scale, height=height, width=width,
                              negative_prompt=negative_prompt, batch_size=batch_size)
    reward_model = resolve_reward(reward, device=getattr(process, "device", None))
    generator = torch.Generator("cpu").manual_seed(int(seed))
    budget = Budget(nfe=nfe_budget) if nfe_budget is not None else None
    return fn(process, reward_model, prompts, generator=generator, budget=budget, callback=callback, **options)
