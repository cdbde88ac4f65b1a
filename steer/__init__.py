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

__version__ = "0.1.0"

_EXPORTS = {"generate": "steer.api", "Budget": "steer.budget", "Trace": "steer.budget", "Cond": "steer.types",
            "Prediction": "steer.types", "Result": "steer.types", "Schedule": "steer.types",
            "StepInfo": "steer.types", "wrap": "steer.wrapping"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    """The public names import on first use (PEP 562), so ``import steer`` (and the ``steer`` command's
    start, which handles Ctrl-C) does not wait for torch."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'steer' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
