"""Atomic writes: a temporary file in the same folder, fsync'd and renamed into place (never a partial file),
with the permissions the umask gives, and the removal of temporaries a killed write left behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable


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
