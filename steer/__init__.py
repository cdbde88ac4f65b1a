"""steer: make diffusion and flow-matching generators produce what a reward model prefers."""
from steer.api import generate
from steer.budget import Budget, Trace
from steer.types import Cond, Prediction, Result, Schedule, StepInfo

__version__ = "0.1.0"

__all__ = ["generate", "Budget", "Trace", "Cond", "Prediction", "Result", "Schedule", "StepInfo", "__version__"]
