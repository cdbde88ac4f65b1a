"""The one error type of the public boundary, and the 'did you mean' hint and first-line reading its messages use."""
from __future__ import annotations

import difflib
from typing import Sequence


class SteerError(ValueError):
    """Bad input at the public boundary (``steer.generate``, the CLI, ``steer finetune``); the
    message is one line that names the fix."""


def suggest(name: str, choices: Sequence[str]) -> str:
    """' (did you mean X?)' for the nearest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


class SteerWarning(UserWarning):
    """Something a user should know that is not an error (e.g. a harmless setting changed on ``--resume``)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-blank line of an exception's message, at most ``limit`` characters (for one-line errors)."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:limit]
