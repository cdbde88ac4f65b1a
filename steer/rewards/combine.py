"""Composing rewards: weighted sums, user callables, and ``pkg.module:function`` dotted paths."""
from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from steer.rewards.base import SPACES, Reward
from steer.scoring import check_not_text


class CallableReward(Reward):
    """Wraps a function ``fn(images, prompts) -> Tensor[B]`` (or a sequence of floats) as a ``Reward``.

    ``differentiable`` and ``space`` default to the function's own attributes of those names, else
    False and ``"image"``; ``space="latent"`` declares a function of x̂0 latents ``fn(latents, prompts)``.
    """

    def __init__(self, fn: Callable, name: Optional[str] = None, differentiable: Optional[bool] = None,
                 space: Optional[str] = None):
        if not callable(fn):
            raise TypeError(f"a reward must be callable as fn(images, prompts), got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.differentiable = bool(getattr(fn, "differentiable", False) if differentiable is None else differentiable)
        self.space = getattr(fn, "space", "image") if space is None else space
        if self.space not in SPACES:
            raise ValueError(f"reward {self.name!r}: space must be 'image' or 'latent' (or 'video'), got {self.space!r}")

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        out = self.fn(images, prompts)
        check_not_text(out, self.name)
        return out if out is None or isinstance(out, Tensor) else torch.as_tensor(out)  # the dtype checked by Reward

    def __repr__(self) -> str:
        return f"CallableReward({self.name!r}, differentiable={self.differentiable}, space={self.space!r})"


class WeightedSum(Reward):
    """``sum_k w_k * r_k(images, prompts)``; differentiable iff every term is.

    Each term goes through its own ``__call__``, so a NaN/inf is reported with that term's name.
    """

    def __init__(self, terms: Sequence[tuple[float, Reward]]):
        if not terms:
            raise ValueError("a weighted sum needs at least one reward")
        for weight, reward in terms:
            if not isinstance(reward, Reward):
                raise TypeError(f"weighted sum terms must be Reward instances, got {type(reward).__name__}")
            if not math.isfinite(weight):
                raise ValueError(f"weight of reward {reward.name!r} must be finite, got {weight}")
        self.terms = [(float(w), r) for w, r in terms]
        self.name = "+".join(f"{w:g}*{r.name}" for w, r in self.terms)
        if all(w == 0 for w, _ in self.terms):
            spec = ",".join(f"{r.name}={w:g}" for w, r in self.terms)
            raise ValueError(f"reward spec {spec!r}: every weight is 0, so it scores every image 0 and steers "
                             f"nothing; give at least one reward a nonzero weight (e.g. {self.terms[0][1].name}=1)")
        self.differentiable = all(r.differentiable for _, r in self.terms)
        spaces = {r.space for _, r in self.terms}
        if len(spaces) > 1:
            if "video" in spaces:
                video = [r.name for _, r in self.terms if r.space == "video"]
                other = next(r.name for _, r in self.terms if r.space != "video")
                raise ValueError(f"weighted sum {self.name!r} mixes video rewards ({', '.join(video)}) with "
                                 f"{'latent' if 'latent' in spaces else 'image'} rewards; a sum reads one input: "
                                 f"score image rewards per frame ({other}@frames)")
            latent = [r.name for _, r in self.terms if r.space == "latent"]
            raise ValueError(f"weighted sum {self.name!r} mixes latent rewards ({', '.join(latent)}) with image "
                             f"rewards; a sum reads one input: give image rewards, or latent rewards only")
        self.space = spaces.pop()

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        total = None
        for weight, reward in self.terms:
            value = weight * reward(images, prompts).to(images.device)  # (B,)
            total = value if total is None else total + value
        return total

    def to(self, device=None, dtype=None) -> "WeightedSum":
        for _, reward in self.terms:
            if hasattr(reward, "to"):
                reward.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        return f"WeightedSum({self.terms!r})"


def import_dotted(path: str) -> Callable:
    """The object named by ``"pkg.module:attribute"`` (attribute may be dotted, e.g. ``mod:Class.method``).

    The module is imported from ``sys.path`` as it is; only when its top-level package is not found
    there and the current directory holds it (``pkg.py`` or ``pkg/``) is the current directory
    appended to the *end* of ``sys.path`` and the import retried. So a user's reward module in the
    working directory imports (with its siblings), and nothing there shadows an installed package.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"dotted reward path must look like 'pkg.module:function', got {path!r}")
    try:
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not _append_cwd_for(module_name, err):
                raise
            obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} for reward {path!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (reward {path!r})")
        obj = getattr(obj, part)
    return obj


def _append_cwd_for(module_name: str, err: ModuleNotFoundError) -> bool:
    """Append the current directory to the end of ``sys.path`` if ``module_name``'s top-level package is
    what was not found and the current directory holds it; True when the import is worth retrying."""
    top = module_name.split(".")[0]
    cwd = os.getcwd()
    if err.name != top or cwd in sys.path or "" in sys.path:
        return False
    if not (os.path.isfile(os.path.join(cwd, top + ".py")) or os.path.isdir(os.path.join(cwd, top))):
        return False
    sys.path.append(cwd)
    importlib.invalidate_caches()
    return True


def as_reward(obj, name: Optional[str] = None, space: Optional[str] = None) -> Reward:
    """A ``Reward`` from a ``Reward`` (unchanged), a callable, or a dotted path string; ``space="latent"``
    declares a callable of latents (else its ``space`` attribute, else ``"image"``)."""
    if isinstance(obj, Reward):
        if space is not None and space != obj.space:
            raise ValueError(f"reward {obj.name!r} reads {obj.space}s; it cannot be declared space={space!r}")
        return obj
    if isinstance(obj, str):
        target = import_dotted(obj)
        if isinstance(target, type) and issubclass(target, Reward):
            target = target()  # a Reward class with a no-argument constructor
        return target if isinstance(target, Reward) else CallableReward(target, name=name or obj, space=space)
    return CallableReward(obj, name=name, space=space)
