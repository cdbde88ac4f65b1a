"""Any form of a reward a user may pass (a spec string, a ``Reward``, a callable) as a ``Reward``: the one rule
``steer.generate``, ``steer finetune`` and ``steer.wrap`` share."""
from __future__ import annotations

from steer.errors import SteerError
from steer.rewards.base import Reward
from steer.rewards.combine import as_reward
from steer.rewards.registry import load


def resolve(reward, device=None, dtype=None, *, who: str = "") -> Reward:
    """A ``Reward`` from a spec string (``"hps"``, ``"hps=1,clip=0.5"``, loaded on ``device``), a ``Reward``, or a
    callable (images, prompts) -> Tensor; anything else is one line (prefixed ``who: `` when given)."""
    if isinstance(reward, Reward):
        return reward
    if isinstance(reward, str):
        return load(reward, device=device, dtype=dtype)
    if callable(reward):
        return as_reward(reward)
    raise SteerError(f"{who + ': ' if who else ''}reward must be a spec string such as 'hps' or 'hps=1,clip=0.5', a "
                     f"Reward, or a callable (images, prompts) -> Tensor; got {type(reward).__name__}")
