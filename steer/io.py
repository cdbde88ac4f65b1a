"""The IO layer of ``steer generate`` and ``steer finetune``: prompts, ``KEY=VALUE`` values, dtypes,
and atomic writes (a temporary file in the same folder, fsync'd and renamed into place: never a
partial file). The command boundary (errors -> one line and exit 2, Ctrl-C -> exit 130) is
``steer/boundary.py``, re-exported here.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

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


LOCK = ".steer.lock"  # the lock file of a run folder; it stays there, holding the last holder's PID
_HELD: dict[str, int] = {}  # folder (resolved) -> the open file descriptor whose flock holds it
_NO_LOCKS = {getattr(errno, n) for n in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, n)}


def _holds(folder: Path) -> bool:
    """Whether this process holds ``folder`` (its lock file is still the one it locked)."""
    fd = _HELD.get(str(folder.resolve()))
    if fd is None:
        return False
    try:
        held, there = os.fstat(fd), os.stat(folder / LOCK)
        return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)
    except OSError:
        return False


def _holder(fd: int) -> str:
    """The PID written in a lock file (a holder that has just locked may not have written it yet)."""
    import time

    for _ in range(20):
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if pid:
            return pid
        time.sleep(0.01)
    return "unknown"


def hold_folder(folder: Path) -> bool:
    """Hold the run folder ``folder`` for this process: an exclusive ``flock`` on ``folder/.steer.lock``
    (which then holds this PID). The OS releases it when the process ends, however it ends, so a killed
    run never leaves it stuck. Held by another process: a one-line ``SteerError`` naming that PID.
    Returns False when this process held it already (holding is re-entrant); also where the OS or the
    file system has no ``flock`` (the folder is then not guarded)."""
    folder = Path(folder)
    if _holds(folder):
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise SteerError(f"cannot lock --out {str(folder)!r} ({e.strerror}); choose a folder you can write to") \
            from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder(fd) if e.errno not in _NO_LOCKS else None
        os.close(fd)
        if holder is None:
            return False
        raise _in_use(folder, holder) from None
    with contextlib.suppress(OSError):  # the PID is for the message only; a full disk may refuse it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    stale = _HELD.pop(str(folder.resolve()), None)
    if stale is not None:
        with contextlib.suppress(OSError):
            os.close(stale)
    _HELD[str(folder.resolve())] = fd
    return True


def check_free(folder: Path) -> None:
    """A one-line ``SteerError`` naming the PID when another process holds ``folder`` now (a check before
    a run loads anything; the run itself holds the folder with :func:`hold_folder`)."""
    folder = Path(folder)
    if not (folder / LOCK).is_file() or _holds(folder):
        return
    try:
        import fcntl

        fd = os.open(folder / LOCK, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (ImportError, OSError):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # shared, and let go at once: it takes nothing
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise _in_use(folder, _holder(fd)) from None
    finally:
        os.close(fd)


def _in_use(folder: Path, holder: str) -> SteerError:
    return SteerError(f"--out {str(folder)!r} is in use by another steer run (PID {holder}); wait for it to end, "
                      f"stop it, or choose another --out")


def release_folder(folder: Path) -> None:
    """Let go of a folder :func:`hold_folder` took (the lock file stays: deleting it would let two runs
    lock two different files)."""
    fd = _HELD.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def holding(folder: Path, state=None) -> Iterator[None]:
    """:func:`hold_for_run` for the block, released after it (unless this process held it before)."""
    took = hold_for_run(folder, state)
    try:
        yield
    finally:
        if took:
            release_folder(folder)


def hold_for_run(folder: Path, state=None) -> bool:
    """:func:`hold_folder` for a run of one or several processes (``state``: accelerate's ``PartialState``
    or ``Accelerator``, None for one process): the main process holds the folder for all of them and
    tells the others whether it could, so every rank of a refused run stops with the same line."""
    if state is None or getattr(state, "num_processes", 1) <= 1:
        return hold_folder(folder)
    error, took = None, False
    if state.is_main_process:
        try:
            took = hold_folder(folder)
        except Exception as e:  # noqa: BLE001 - every rank must hear of it, or the others wait forever
            error = str(e) if isinstance(e, SteerError) else f"cannot lock --out {str(folder)!r}: {e}"
    from accelerate.utils import broadcast_object_list

    error = broadcast_object_list([error])[0]
    if error:
        raise SteerError(error)
    return took


TMP_SUFFIX = ".tmp"
# what ``atomic_write`` leaves behind when killed mid-write: ``.<name>.<mkstemp's 8 characters>.tmp``
_TMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX))


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the classic swap (not thread-safe, but momentary)
    os.umask(mask)
    return mask


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write`` left in ``folder`` (not recursive); returns them.

    Call it before a run starts writing into ``folder``; a temporary of a write in flight would go too."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if _TMP_NAME.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, rename it over ``path``, fsync
    the folder: readers see the old file or the complete new one. The file gets the permissions an
    ordinary ``open(path, "w")`` would (``0o666`` less the umask), not ``mkstemp``'s 0600. An ``OSError``
    (a full disk, a read-only folder) names ``path`` and leaves the old file as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise naming_path(e, path) from e
    try:
        with contextlib.suppress(OSError, AttributeError):  # fchmod: POSIX only
            os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise naming_path(e, path) from e
        raise
    with contextlib.suppress(OSError, AttributeError):  # folders cannot be opened on every OS
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def naming_path(error: OSError, path: Path) -> OSError:
    """``error`` with ``path`` as its file name (``f.write`` on a full disk names no file), for writes that
    are not :func:`atomic_write`'s: ``raise io.naming_path(e, path) from e``."""
    if error.errno is None:
        return OSError(f"{error}: {str(path)!r}")
    return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))


def follow_umask(path: Path) -> None:
    """Give ``path`` (a file, or each file in a folder) the permissions ``open(path, "w")`` would:
    ``0o666`` less the umask. For files written by libraries that create them 0600 (safetensors)."""
    path = Path(path)
    mode = 0o666 & ~umask()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    for file in files:
        if not file.is_symlink():
            with contextlib.suppress(OSError):
                os.chmod(file, mode)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON (tensors as lists, paths as strings, anything else by ``repr``)."""
    def jsonable(v):
        return v.detach().cpu().tolist() if hasattr(v, "detach") else str(v) if isinstance(v, Path) else repr(v)

    atomic_write_bytes(path, json.dumps(obj, indent=2, default=jsonable).encode())


from steer.boundary import boundary, deferred_interrupts  # noqa: E402,F401  (the commands' boundary)
