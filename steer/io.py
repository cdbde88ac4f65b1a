"""The IO layer of ``steer generate`` and ``steer finetune``: prompts, ``KEY=VALUE`` values, dtypes,
and, re-exported, atomic writes (``steer/atomic.py``) and run-folder locks (``steer/folder_lock.py``).
The command boundary (errors -> one line and exit 2, Ctrl-C -> exit 130) is
``steer/boundary.py``, re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from steer.errors import SteerError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float32": "float32", "fp32": "float32"}


MAX_PROMPT_CHARS = 10_000  # a prompt longer than this is refused (text encoders read a few hundred tokens)
# characters that print nothing although they are not whitespace: the Unicode default-ignorables and
# the Hangul / braille fillers (with the format, control, private-use, surrogate and unassigned ones)
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u2800\u3164\uffa0") | \
    frozenset(map(chr, range(0xFE00, 0xFE10))) | frozenset(map(chr, range(0xE0100, 0xE01F0)))


def _invisible(ch: str) -> bool:
    import unicodedata

    return ch in _INVISIBLE or ch.isspace() or unicodedata.category(ch)[0] in "CZ"


def prompt_lines(text: str) -> list[tuple[int, str]]:
    """``text``'s lines as ``wc -l`` counts them: split on ``\\n`` only (a ``\\r\\n`` ending is one; U+2028,
    U+0085, form feeds and the like stay inside their line), a leading BOM dropped; each as (its 1-based
    number, its text stripped), blank ones left out."""
    text = text[1:] if text.startswith("\ufeff") else text
    return [(n, line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def check_prompt(prompt: str, where: str) -> str:
    """``prompt`` if it is one a text encoder can read, else a one-line ``SteerError`` naming ``where``
    (e.g. ``"line 3 of prompts file 'p.txt'"``): no NUL byte, something visible
    (not only zero-width or format characters), at most ``MAX_PROMPT_CHARS`` characters."""
    if "\0" in prompt:
        raise SteerError(f"{where} contains a NUL byte; save the prompts as plain UTF-8 text")
    if all(_invisible(ch) for ch in prompt):
        raise SteerError(f"{where} has only invisible characters (zero-width, format or control ones); "
                         f"write the prompt's text or delete the line")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise SteerError(f"{where} is {len(prompt):,} characters long, over the limit of {MAX_PROMPT_CHARS:,} "
                         f"(text encoders read a few hundred tokens); shorten it")
    return prompt


def read_prompts(path: Optional[Path] = None, given: Iterable[str] = ()) -> list[str]:
    """The ``--prompt`` values ``given``, then the non-blank lines of the prompts file ``path`` (UTF-8, one
    prompt per ``\\n``-ended line, see :func:`prompt_lines`); each checked by :func:`check_prompt`."""
    prompts = list(given or [])
    if any(not p.strip() for p in prompts):
        raise SteerError("--prompt is empty; give the prompt's text (blank lines of a --prompts file are skipped)")
    prompts = [check_prompt(p, f"--prompt {p.strip()[:40]!r}") for p in prompts]
    if path is not None:
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            fix = "; save it as UTF-8 text" if isinstance(e, UnicodeDecodeError) else ""
            raise SteerError(f"cannot read prompts file {str(path)!r}: {e.__class__.__name__}: {e}{fix}") from None
        prompts += [check_prompt(line, f"line {n} of prompts file {str(path)!r}") for n, line in prompt_lines(text)]
    if not prompts and path is not None:
        raise SteerError(f"no prompts: prompts file {str(path)!r} is empty; write one prompt per line")
    if not prompts:
        raise SteerError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE with one prompt per line")
    return prompts


def _numbers(items: list[str]) -> Optional[tuple]:
    """``items`` as a tuple of ints (all ints) or floats (all numbers, some not ints), else None."""
    for cast in (int, float):
        try:
            return tuple(cast(s) for s in items)
        except ValueError:
            pass
    return None


def parse_value(raw: str, default: Any = None, *, allow_none: bool = False) -> Any:
    """``raw`` typed like ``default``: true/false words for a bool, an int, a float, a comma-separated
    tuple (of ints / floats when the default's items are numbers, or when it is empty and every item is
    a number; else of strings); for a None default a comma-separated list of numbers is a tuple of ints
    (or floats: ``-o branch_steps=1,2``); for any other default an int, else a float, else the text.
    ``none`` is None unless the default is a bool or a number (``allow_none``: always)."""
    text, numeric = raw.strip(), isinstance(default, (bool, int, float))
    if text.lower() == "none" and (allow_none or not numeric):
        return None
    if isinstance(default, bool):
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise SteerError(f"expected true/false, got {raw!r}")
    if isinstance(default, (tuple, list)):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if default and all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in default):
            numbers = _numbers(items)
            floats = any(isinstance(d, float) for d in default)
            if numbers is None or (not floats and any(isinstance(n, float) for n in numbers)):
                raise SteerError(f"expected comma-separated {'numbers' if floats else 'ints'}, got {raw!r}")
            return tuple(float(n) for n in numbers) if floats else numbers
        if not default:
            numbers = _numbers(items)
            if numbers is not None and items:
                return numbers
        return tuple(items)
    if "," in text and default is None:
        items = [s.strip() for s in text.split(",") if s.strip()]
        numbers = _numbers(items) if items else None
        if numbers is not None:
            return numbers
    for cast in (int,) if isinstance(default, int) else (float,) if isinstance(default, float) else (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if numeric:
        raise SteerError(f"expected {'an int' if isinstance(default, int) else 'a float'}, got {raw!r}")
    return text


def parse_pairs(items: Iterable[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` strings -> ``{key: value}`` (dashes in keys become underscores)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SteerError(f"{flag} takes KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip().replace("-", "_")] = raw.strip()
    return out


def parse_options(items: Iterable[str], defaults: Mapping[str, Any], flag: str, *,
                  allow_none: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> ``{key: value typed like defaults.get(key)}`` (see :func:`parse_value`)."""
    out = {}
    for key, raw in parse_pairs(items, flag).items():
        try:
            out[key] = parse_value(raw, defaults.get(key), allow_none=allow_none)
        except SteerError as e:
            raise SteerError(f"{flag} {key}: {e}") from None
    return out


def parse_dtype(name: Optional[str]):
    """``--dtype`` name -> ``torch.dtype`` (None stays None: the pipeline's own)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise SteerError(f"--dtype must be one of float16, bfloat16, float32; got {name!r}")
    import torch

    return getattr(torch, DTYPES[name])


def check_device(device: Optional[str]) -> None:
    """``--device`` that this machine lacks (CUDA / MPS not available): a one-line error naming the fix."""
    if device is None:
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SteerError(f"--device {device} asked for, but no CUDA device is available here; use --device cpu")
    if device.startswith("mps") and not torch.backends.mps.is_available():
        raise SteerError(f"--device {device} asked for, but MPS is not available here; use --device cpu")


def output_dir(path: Path, create: bool = True) -> Path:
    """``--out``: a folder (created when ``create``), not a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SteerError(f"--out {str(path)!r} is a file, not a folder; choose another path")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SteerError(f"cannot create output folder {str(path)!r}: {e}") from None
    return path


from steer.atomic import (TMP_SUFFIX, atomic_torch_save, atomic_write, atomic_write_bytes,  # noqa: E402,F401
                          follow_umask, naming_path, remove_stale_temporaries, umask, write_json)  # (re-exported)
from steer.folder_lock import LOCK, check_free, hold_folder, hold_for_run, holding, release_folder  # noqa: E402,F401
from steer.boundary import boundary, deferred_interrupts  # noqa: E402,F401  (the commands' boundary)
