"""One run per folder: an advisory ``flock`` on ``<folder>/.steer.lock`` held for a run's lifetime (a second
run into the same folder is refused in one line naming the holder's PID)."""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from steer.errors import SteerError

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
