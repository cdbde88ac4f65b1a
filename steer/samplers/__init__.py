"""Samplers: best-of-N, Feynman-Kac steering (SMC over the chain) and ReNO noise optimization.

Every method is ``method(process, reward, prompts, *, generator=None, budget=None, callback=None,
**options) -> Result``; ``resampling`` holds the resampling schemes and ``ess`` (reused by search).
"""
from steer.samplers.best_of_n import best_of_n
from steer.samplers.fk import fk
from steer.samplers.reno import reno

__all__ = ["best_of_n", "fk", "reno"]
