"""A reward chosen per prompt category (CARINOX, Kasaei et al. 2025, "CARINOX: Inference-time Scaling with
Category-Aware Reward-based Initial Noise Optimization and Exploration"; code amirkasaei/carinox).

CARINOX assigns each prompt categories with probabilities (its ``assets/category_guess.json``: prompt ->
[(category, p), ...], guessed by an LLM) and scores it with the rewards that correlate best with human
judgement for those categories (its ``assets/weights.json``: category -> reward weights). Here the user
supplies both: ``rewards`` maps a category to a reward (a ``WeightedSum`` for a weighted mix) and
``categorize`` maps a prompt to a category or to {category: probability}; the prompt's reward is
Σ_c p_c·rewards[c](image, prompt). A prompt with no known category is scored by ``default``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from steer.rewards.base import Reward

Categories = Union[str, Mapping[str, float]]


class CategoryReward(Reward):
    """Per prompt, the probability-weighted rewards of its categories; ``default`` for the rest."""

    name = "category"

    def __init__(self, rewards: Mapping[str, Reward], categorize: Union[Callable[[str], Categories],
                 Mapping[str, Categories]], default: Optional[Reward] = None):
        if not isinstance(rewards, Mapping) or not rewards:
            raise ValueError("category rewards: pass a non-empty mapping category -> reward")
        for c, r in rewards.items():
            if not callable(r):
                raise TypeError(f"category rewards: the reward of category {c!r} is not callable "
                                f"({type(r).__name__}); pass a steer Reward")
        if not (callable(categorize) or isinstance(categorize, Mapping)):
            raise TypeError("category rewards: categorize must be a function prompt -> category (or "
                            "{category: probability}) or a mapping prompt -> category")
        self.rewards, self.categorize, self.default = dict(rewards), categorize, default
        terms = list(self.rewards.values()) + ([default] if default is not None else [])
        self.differentiable = all(getattr(r, "differentiable", False) for r in terms)

    def weights(self, prompt: str) -> dict[str, float]:
        """{category: probability} of ``prompt`` among the known categories ({} -> the default reward)."""
        got = self.categorize(prompt) if callable(self.categorize) else self.categorize.get(prompt)
        if got is None:
            return {}
        probs = {got: 1.0} if isinstance(got, str) else dict(got)
        for c, p in probs.items():
            if not isinstance(p, (int, float)) or p < 0:
                raise ValueError(f"category rewards: probability of {c!r} for prompt {prompt!r} must be a number "
                                 f">= 0, got {p!r}")
        return {c: float(p) for c, p in probs.items() if c in self.rewards and p > 0}

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        rows = [self.weights(p) for p in prompts]
        out = torch.zeros(len(prompts), device=images.device)
        for c, reward in list(self.rewards.items()) + [(None, self.default)]:
            idx = [k for k, w in enumerate(rows) if (c in w if c is not None else not w)]
            if not idx:
                continue
            if reward is None:
                raise ValueError(f"category rewards: no category for prompt {prompts[idx[0]]!r} and no default "
                                 f"reward; add its category or pass default=")
            w = torch.tensor([rows[k].get(c, 1.0) for k in idx], device=images.device)
            s = reward(images[idx], [prompts[k] for k in idx]).to(images.device).float()
            out = out.index_add(0, torch.tensor(idx, device=images.device), w * s)
        return out  # (B,)
