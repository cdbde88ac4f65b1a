"""The steering methods by name: the table, name resolution and option checks.

Used by ``steer.generate``, the CLI and ``steer.finetune.distill`` (which steers with any method),
so none of them imports another's facade.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Union

from steer.errors import SteerError, suggest

# public method name -> "module:function"
METHODS: dict[str, str] = {
    "best_of_n": "steer.samplers.best_of_n:best_of_n",
    "fk": "steer.samplers.fk:fk",
    "reno": "steer.samplers.reno:reno",
    "carinox": "steer.samplers.carinox:carinox",
    "dts": "steer.search.dts:dts",
    "dts_star": "steer.search.dts:dts_star",
    "beam": "steer.search.beam:beam",
    "svdd": "steer.search.svdd:svdd",
    "rbf": "steer.search.rbf:rbf",
    "reward_guidance": "steer.samplers.guidance:reward_guidance",
    "zero_order": "steer.search.zero_order:zero_order",
    "path_search": "steer.search.zero_order:path_search",
}
ALIASES: dict[str, str] = {"bon": "best_of_n", "best-of-n": "best_of_n", "dts*": "dts_star",
                           "dts-star": "dts_star", "zero-order": "zero_order", "smc": "fk",
                           "path-search": "path_search", "svdd-pm": "svdd", "reward-guidance": "reward_guidance",
                           "dps": "reward_guidance", "rollover-budget-forcing": "rbf"}
# the head every method shares; what follows it are the method's own options
COMMON = ("generator", "budget", "callback")


def resolve_method(method: Union[str, Callable]) -> Callable:
    """A method function from its name or alias (or the function itself)."""
    if callable(method):
        return method
    key = ALIASES.get(str(method).lower(), str(method).lower())
    if key not in METHODS:
        names = sorted(set(METHODS) | set(ALIASES))
        raise SteerError(f"unknown method {method!r}{suggest(str(method), names)}; "
                         f"choose from {', '.join(sorted(METHODS))}")
    module, fn = METHODS[key].split(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise SteerError(f"method {key!r} is not available in this installation ({e})") from None


def method_options(fn: Callable) -> dict[str, Any]:
    """Keyword-only options of a method with their defaults (the shared head excluded)."""
    sig = inspect.signature(fn)
    return {p.name: p.default for p in sig.parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in COMMON}


def check_options(fn: Callable, options: dict[str, Any], method_name: str) -> None:
    """Options the method does not take -> one-line error listing the ones it does."""
    known = method_options(fn)
    for k in options:
        if k not in known:
            raise SteerError(f"method {method_name!r} takes no option {k!r}{suggest(k, list(known))}; "
                             f"its options: {', '.join(sorted(known)) or 'none'}")


def options_text(fn: Callable) -> str:
    """A method's options with their defaults, one line as ``steer methods`` shows them; the noise
    knob reads the same for every method (``eta`` is its alias on diffusion, not a second knob)."""
    out = []
    for name, default in method_options(fn).items():
        if name == "eta":
            continue
        out.append(f"{'noise_level|eta' if name == 'noise_level' else name}={default!r}")
    return ", ".join(out)
