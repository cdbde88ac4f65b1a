"""Rewards: ``Reward(images [B,3,H,W] in [0,1], prompts) -> Tensor[B]``.

``load("hps=1,clip=0.5")`` builds one from a spec (``"hps@frames:min"``: per frame of a video); ``registry.table()`` lists them all. Model
modules (hps, pickscore, image_reward, clip, aesthetic) import their heavy dependencies lazily.
"""
from steer.rewards.base import Reward
from steer.rewards.combine import CallableReward, WeightedSum, as_reward
from steer.rewards.registry import load, parse_spec, table
from steer.rewards.resolve import resolve
from steer.rewards.video import FrameReward, TemporalConsistencyReward
from steer.rewards.weights import MissingWeightsError

__all__ = ["Reward", "CallableReward", "WeightedSum", "as_reward", "resolve", "load", "parse_spec", "table", "MissingWeightsError",
           "FrameReward", "TemporalConsistencyReward"]
