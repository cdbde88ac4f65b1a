"""Scoring states with a reward: decode what the reward reads, count the calls, refuse NaN.

Shared by samplers, search and fine-tuning so every method counts reward calls the same way
(one image scored = one reward call) and reports a non-finite reward with the method, step and
prompt named.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from steer.errors import SteerError


class RewardError(SteerError, FloatingPointError):
    """A reward that failed or returned something that is not one finite score per image; the message
    names the method, the step and the prompt. (A ``FloatingPointError`` too, for NaN/inf scores.)"""


class NotScores(TypeError):
    """A reward function returned text, a dict or another non-number (raised by ``CallableReward``);
    ``score_images`` reports it with the method, step and prompt named."""


def returned(out) -> str:
    """What a reward returned, for a message: ``str 'good'``, ``dict with keys ['score']``."""
    if isinstance(out, dict):
        return f"a dict with keys {list(out)[:5]!r}"
    text = repr(out)
    return f"{type(out).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def check_not_text(out, name: str) -> None:
    """Refuse a str / bytes / dict returned by reward ``name`` in one line (torch's own error says nothing)."""
    if isinstance(out, (str, bytes, dict)):
        raise NotScores(f"reward {name!r} returned {returned(out)}, not scores; return a tensor of scores, one per image")


def score_images(reward, images: Tensor, prompts: Sequence[str], *, trace=None, method: str = "?",
                 step: Optional[int] = None) -> Tensor:
    """reward(images, prompts) as float32 (B,) on the images' device, counted into ``trace``.

    The reward reads a copy of ``images``, so one that writes into its input cannot corrupt the
    images a method returns. A reward that raises, returns something other than B real finite numbers,
    or a tensor that cannot be brought to the images' device is a ``RewardError`` naming the method,
    the step and the prompt (NaN/inf also a ``FloatingPointError``); so is one that calls ``sys.exit``."""
    if trace is not None:
        trace.add_reward_calls(images.shape[0])
    where = "the final sample" if step is None else f"step {step}"
    name = getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__
    distinct = list(dict.fromkeys(prompts))
    which = (f"prompt {distinct[0]!r}" if len(distinct) == 1 else
             f"prompts {', '.join(map(repr, distinct[:3]))}{' ...' if len(distinct) > 3 else ''}")
    head = f"{method}: reward {name!r} at {where} for {which}"
    copy = images.clone()
    try:
        if trace is None:
            r = reward(copy, list(prompts))
        else:
            with trace.timed("reward"):
                r = reward(copy, list(prompts))
    except RewardError:
        raise
    except NotScores as e:
        raise RewardError(f"{method} at {where} for {which}: {e}") from None
    except FloatingPointError as e:  # the Reward base class refusing its own NaN names the prompt
        raise RewardError(f"{method} at {where}: {e}") from None
    except SystemExit as e:  # sys.exit in a user's reward fails the run; it must not end it as a success
        raise RewardError(f"{head} called sys.exit({e.code!r}); a reward must return scores or raise an "
                          f"error, not exit") from None
    except Exception as e:  # noqa: BLE001 - a user's reward: say where it failed, keep the cause chained
        first = next((ln for ln in str(e).splitlines() if ln.strip()), "")
        raise RewardError(f"{head} raised {e.__class__.__name__}: {first}") from e
    r = _as_scores(r, images, head)
    bad = ~torch.isfinite(r)
    if bad.any():
        k = int(torch.nonzero(bad)[0])
        raise RewardError(
            f"{method}: reward {name!r} returned {r[k].item()} at {where} "
            f"for prompt {prompts[k]!r}; check the reward model and its inputs"
        )
    return r


def _as_scores(r, images: Tensor, head: str) -> Tensor:
    """A reward's return value as float32 (B,) on the images' device, or a RewardError."""
    B = images.shape[0]
    if r is None:
        raise RewardError(f"{head} returned None; return a tensor of {B} scores, one per image")
    if isinstance(r, (str, bytes, dict)):
        raise RewardError(f"{head} returned {returned(r)}, not scores; return a tensor of {B} scores, one per image")
    try:
        r = torch.as_tensor(r)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RewardError(f"{head} returned {type(r).__name__}, not numbers ({e.__class__.__name__}); "
                          f"return a tensor of {B} scores, one per image") from None
    if r.is_complex():
        raise RewardError(f"{head} returned complex scores ({r.dtype}); return {B} real numbers, one per image")
    if r.dtype == torch.bool or not (r.is_floating_point() or r.dtype in _INTEGERS):
        raise RewardError(f"{head} returned scores of dtype {r.dtype}; return {B} real numbers, one per image")
    if r.numel() != B or (r.dim() > 1 and r.shape[0] != B):
        raise RewardError(f"{head} returned shape {tuple(r.shape)} for {B} images; return {B} scores, one per image")
    if r.device != images.device:
        try:
            r = r.to(images.device)
        except (RuntimeError, NotImplementedError) as e:
            raise RewardError(f"{head} returned scores on {r.device} that cannot be moved to {images.device} "
                              f"({e.__class__.__name__}); return them on the images' device") from None
    return r.float().reshape(-1)


_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def eval_scores(reward, images: Tensor, prompts: Sequence[str], *, method: str = "?", process=None,
                latents: Optional[Tensor] = None) -> Tensor:
    """A held-out reward of finished images (B,): scored without gradients on a detached copy, not
    counted as the method's reward calls (it never steers anything), errors named as ``score_images``'.
    A video reward reads the videos' frames (``process`` and, for ``frame_layout=k``, ``latents``)."""
    if reads_latents(reward):
        raise SteerError(f"eval reward {getattr(reward, 'name', reward)!r} reads latents; an eval reward scores the "
                         f"returned images: give an image reward")
    with torch.no_grad():
        scored = reward_input(process, reward, latents, images.detach())
        return score_images(reward, scored.detach(), prompts, method=f"{method} (eval reward)")


def decode(process, x0: Tensor, trace=None) -> Tensor:
    """process.decode(x0) -> images (B, 3, H, W), its time added to ``trace.timings['decode']``."""
    if trace is None:
        return process.decode(x0)
    with trace.timed("decode"):
        return process.decode(x0)


def reads_latents(reward) -> bool:
    """True for a reward declared ``space = "latent"``: it scores x̂0 latents, no decode needed."""
    return getattr(reward, "space", "image") == "latent"


def reward_input(process, reward, x0: Optional[Tensor], images: Tensor) -> Tensor:
    """What ``reward`` reads of ``images = process.decode(x0)``: the images, ``x0`` for a latent reward,
    the frames (B, F, 3, H, W) for a video reward (``space = "video"``; ``video.video_of``)."""
    space = getattr(reward, "space", "image")
    if space == "latent":
        return x0
    if space == "video":
        from steer.pipelines.video import video_of

        return video_of(process, images, x0)
    return images


def decode_and_score(process, reward, x0: Tensor, prompts: Sequence[str], *, trace=None, method: str = "?",
                     step: Optional[int] = None, grad: bool = False) -> tuple[Tensor, Tensor]:
    """Decode x̂0 (or final latents) (B, ...) and score them (a latent reward scores ``x0`` itself), in
    chunks of the process' ``batch_size`` (its latents per call); without gradients unless ``grad``.
    A video reward reads the frames (B, F, 3, H, W) behind each image (``reward_input``).
    Returns images (B, 3, H, W) float32 and rewards (B,)."""
    chunk = getattr(process, "batch_size", None) or x0.shape[0]
    images, rewards = [], []
    with torch.set_grad_enabled(grad):
        for s in range(0, x0.shape[0], chunk):
            img = decode(process, x0[s:s + chunk], trace)  # (b, 3, H, W)
            scored = reward_input(process, reward, x0[s:s + chunk], img)
            rewards.append(score_images(reward, scored, prompts[s:s + chunk], trace=trace, method=method, step=step))
            images.append(img.float())
    return torch.cat(images), torch.cat(rewards)


def score_latents(process, reward, x0: Tensor, prompts: Sequence[str], *, trace=None, method: str = "?",
                  step: Optional[int] = None, grad: bool = False) -> Tensor:
    """The rewards (B,) of ``decode_and_score``; a latent reward (``space = "latent"``) skips the decode."""
    if not reads_latents(reward):
        return decode_and_score(process, reward, x0, prompts, trace=trace, method=method, step=step, grad=grad)[1]
    chunk = getattr(process, "batch_size", None) or x0.shape[0]
    with torch.set_grad_enabled(grad):
        return torch.cat([score_images(reward, x0[s:s + chunk], prompts[s:s + chunk], trace=trace, method=method,
                                       step=step) for s in range(0, x0.shape[0], chunk)])
