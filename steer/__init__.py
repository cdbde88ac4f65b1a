"""steer: make diffusion and flow-matching generators produce what a reward model prefers."""
import os as _os
import sys as _sys


def _unshadow() -> None:
    """``python -m steer`` puts the current directory first on ``sys.path`` before this package is
    imported; take it off again (as ``python -P`` would), so files in the working directory never
    shadow installed packages. Reward modules named by ``--reward mymodule:fn`` are still found there
    (``steer.rewards.combine.import_dotted``). Only for ``-m steer``, never for another program."""
    if _sys.argv[:1] != ["-m"] or _sys.flags.safe_path:  # argv[0] is "-m" while `python -m` imports
        return
    argv, ours = list(getattr(_sys, "orig_argv", [])), ("steer", "steer.cli", "steer.__main__")
    by_us = any(a == "-m" and b in ours for a, b in zip(argv, argv[1:])) or any(a[2:] in ours for a in argv
                                                                                 if a.startswith("-m"))
    if by_us and _sys.path and _sys.path[0] in ("", _os.getcwd()):
        del _sys.path[0]


_unshadow()

from steer.api import generate  # noqa: E402
from steer.budget import Budget, Trace  # noqa: E402
from steer.types import Cond, Prediction, Result, Schedule, StepInfo  # noqa: E402

__version__ = "0.1.0"

__all__ = ["generate", "Budget", "Trace", "Cond", "Prediction", "Result", "Schedule", "StepInfo", "__version__"]
