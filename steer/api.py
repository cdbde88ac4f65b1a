"""``steer.generate``: resolve names, validate, dispatch. No algorithm lives here."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from steer.budget import Budget
from steer.catalog import ALIASES, METHODS, check_options, method_options, resolve_method  # noqa: F401
from steer.errors import SteerError, suggest  # noqa: F401
from steer.run_options import RunOptions
from steer.types import Result


def resolve_reward(reward, device=None, dtype=None):
    """A ``Reward`` from a spec string, a ``Reward``, or a callable (images, prompts) -> Tensor
    (``steer.rewards.resolve``)."""
    from steer import rewards

    return rewards.resolve(reward, device=device, dtype=dtype)


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
    if not isinstance(prompt, (str, list, tuple)):
        raise SteerError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise SteerError("no prompts given: pass a string or a non-empty list of strings")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise SteerError(f"prompts must be strings, got {type(bad[0]).__name__}")
    if any(not p.strip() for p in prompts):
        raise SteerError(f"prompt {next(k for k, p in enumerate(prompts) if not p.strip()) + 1} is empty; "
                         f"give every prompt some text")
    return prompts


def check_images(result: Result, method: str, prompts: Sequence[str]) -> Result:
    """A run's final images: non-finite pixels, or every image one flat colour (the chain blew up and
    was clipped to black or white), are an error, not a result."""
    images = result.images
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        return result
    flat = images.detach().reshape(images.shape[0], -1)
    bad = ~torch.isfinite(flat).all(dim=1)
    if bad.any():
        k = int(torch.nonzero(bad)[0])
        raise SteerError(f"{method}: the image for prompt {prompts[k]!r} has non-finite pixels; the chain diverged: "
                         f"lower guidance_scale or the noise level (eta / noise_level), or check the reward")
    if flat.shape[1] > 3 and bool((flat.amax(dim=1) == flat.amin(dim=1)).all()):
        raise SteerError(f"{method}: every image came out one flat value ({float(flat[0, 0]):g}); the chain diverged: "
                         f"lower guidance_scale or the noise level (eta / noise_level), or check the reward")
    return result


def default_reward(pipe) -> str:
    """The reward when none is named: the shipped ``shapes-clip`` for the embedded model (``pipe`` None),
    else ``hps``."""
    return "shapes-clip" if pipe is None else "hps"


def generate(pipe, prompt: Union[str, Sequence[str]], *, method: Union[str, Callable] = "fk", reward=None,
             seed: int = 0, steps: Optional[int] = None, guidance_scale: Optional[float] = None,
             height: Optional[int] = None, width: Optional[int] = None, negative_prompt: Optional[str] = None,
             batch_size: Optional[int] = None, device=None, dtype=None, nfe_budget: Optional[int] = None,
             callback: Optional[Callable] = None, eval_reward=None, num_frames: Optional[int] = None,
             **options) -> Result:
    """Generate one reward-steered image per prompt.

    ``pipe``: a diffusers pipeline, a model id / local path, a ``steer.pipelines.Process``, or
    ``None`` for the project's embedded default model. ``method``: one of ``steer.api.METHODS``
    (aliases: ``bon``, ``dts*``). ``reward``: a spec (``"hps"``, ``"hps=1,clip=0.5"``), a ``Reward``
    or a callable (default ``default_reward(pipe)``: ``shapes-clip`` on the embedded model, else
    ``hps``). Method options pass through by keyword; ``nfe_budget`` caps denoiser calls per prompt for
    every method. ``eval_reward`` (a spec, ``Reward`` or callable, like ``reward``): a held-out reward
    scored on the returned images only, never steering them, in ``Result.eval_rewards`` — the check on
    reward hacking (an optimized reward that rises while a held-out one does not). ``num_frames``: the
    frames per video of a video pipeline (Wan, LTX-Video; an error on an image pipeline).
    """
    reward = default_reward(pipe) if reward is None else reward
    prompts = normalize_prompts(prompt)
    fn = resolve_method(method)
    name = method if isinstance(method, str) else getattr(fn, "__name__", "method")
    check_options(fn, options, name)
    run = RunOptions.check(seed=seed, steps=steps, guidance_scale=guidance_scale, height=height, width=width,
                           negative_prompt=negative_prompt, batch_size=batch_size, nfe_budget=nfe_budget,
                           num_frames=num_frames, device=device, dtype=dtype)
    process = resolve_process(pipe, device=run.device, dtype=run.dtype, **run.process_options())
    reward_model = resolve_reward(reward, device=getattr(process, "device", None))
    eval_model = None if eval_reward is None else resolve_reward(eval_reward, device=getattr(process, "device", None))
    return run_method(process, prompts, fn, name, reward_model, seed=run.seed, nfe_budget=run.nfe_budget,
                      callback=callback, eval_model=eval_model, options=options)


def run_method(process, prompts: list[str], fn: Callable, name: str, reward_model, *, seed: int,
               nfe_budget: Optional[int], callback, eval_model, options: dict) -> Result:
    """The checked run ``generate`` ends in: the method on a resolved process and rewards, its own option
    errors as one line, the images checked, the held-out reward scored. ``steer generate`` calls it per
    prompt with the options it checked once."""
    generator = torch.Generator("cpu").manual_seed(seed)
    budget = Budget(nfe=nfe_budget) if nfe_budget is not None else None
    own = getattr(fn, "__name__", name)
    try:
        result = fn(process, reward_model, prompts, generator=generator, budget=budget, callback=callback, **options)
    except (ValueError, TypeError) as e:  # a method's own option checks name it first: bad input, one line
        if isinstance(e, SteerError) or not str(e).startswith(f"{own}:"):
            raise
        raise SteerError(str(e).splitlines()[0]) from e
    result = check_images(result, name, prompts)
    if eval_model is not None:
        from steer.scoring import eval_scores

        result.eval_rewards = eval_scores(eval_model, result.images, prompts, method=name, process=process,
                                          latents=result.latents)
    return result
