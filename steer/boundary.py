"""The command boundary of ``steer generate`` / ``steer finetune``: bad input (a ``SteerError`` or any
error) -> ``error: <first line>`` on stderr and exit 2; Ctrl-C -> a message and exit 130, with the
cleanup writes in progress allowed to finish (``deferred_interrupts``). SIGTERM (``kill``, a job
scheduler) and SIGHUP (the terminal closed) are handled like Ctrl-C and exit 143 / 129; a
``sys.exit`` from user code inside a command (a reward) is a failure (exit 2), never a silent
success; an ``OSError`` names its file and the fix.
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Iterator, Optional

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}  # 128 + the signal's number, as a shell says
SIGNALS = tuple(EXIT_CODES)  # what a command handles like Ctrl-C (SIGTERM / SIGHUP: where not ignored)
_OS_FIXES = {errno.ENOSPC: "free space on that disk or choose another --out",
             errno.EDQUOT: "free space within your quota or choose another --out",
             errno.EROFS: "choose a writable --out", errno.EACCES: "check its permissions or choose another --out",
             errno.EPERM: "check its permissions or choose another --out"}


class _Interrupts:
    """The SIGINT handler (in a command also SIGTERM's and SIGHUP's) of :func:`boundary` and
    :func:`deferred_interrupts`.

    The first Ctrl-C raises ``KeyboardInterrupt`` (inside a deferred block: when the block ends, so the
    writes in it complete); a second one while the run cleans up (writes its trace or checkpoint) is
    noted on stderr and does not interrupt that cleanup; a third quits at once with exit 130 (143 / 129
    when the first was a SIGTERM / SIGHUP; a file being written is then left as it was: writes are
    atomic)."""

    def __init__(self):
        self.count, self.raised, self.depth, self.signal = 0, False, 0, "SIGINT"

    def __call__(self, signum, frame):
        import signal

        self.count += 1
        if self.count == 1:
            self.signal = signal.Signals(signum).name
        if not self.raised and self.depth == 0:
            self.raised = True
            raise KeyboardInterrupt
        if self.count >= 3:
            os.write(2, b"interrupted again: quitting now\n")
            os._exit(self.exit_code)
        if self.count == 2 or not self.raised:
            os.write(2, b"interrupted: finishing the writes in progress (Ctrl-C again to quit at once)\n")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal, 130)


def _install(signals: tuple[str, ...] = ("SIGINT",)) -> Optional[tuple[_Interrupts, dict]]:
    """Install a fresh :class:`_Interrupts` for ``signals`` (main thread only); returns it and the
    handlers it replaced."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    handler, previous = _Interrupts(), {}
    for name in signals:
        if not hasattr(signal, name) or (name != "SIGINT" and signal.getsignal(getattr(signal, name)) is not
                                         signal.SIG_DFL):  # not on this OS, or ignored (nohup) / handled
            continue
        try:
            previous[name] = signal.signal(getattr(signal, name), handler)
        except (ValueError, OSError):  # not the main interpreter / no signals here
            break
    if "SIGINT" not in previous:
        _restore((handler, previous))
        return None
    return handler, previous


def _restore(installed: Optional[tuple[_Interrupts, dict]]) -> None:
    if installed is not None:
        import signal

        for name, previous in installed[1].items():
            default = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
            signal.signal(getattr(signal, name), previous if previous is not None else default)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """A block of writes (a trace, a checkpoint and its ``latest``) that a Ctrl-C does not cut short:
    an interrupt during it is raised when it ends (unless an exception is already on its way)."""
    import signal

    current = signal.getsignal(signal.SIGINT)
    installed = None
    if isinstance(current, _Interrupts):
        handler = current
    elif current is signal.default_int_handler:
        installed = _install()
        handler = installed[0] if installed is not None else None
    else:  # SIG_IGN or someone else's handler: leave it alone
        handler = None
    if handler is None:
        yield
        return
    handler.depth += 1
    ok = False
    try:
        yield
        ok = True
    finally:
        handler.depth -= 1
        _restore(installed)
        if ok and handler.depth == 0 and handler.count and not handler.raised:
            handler.raised = True
            raise KeyboardInterrupt


@contextlib.contextmanager
def boundary(debug: bool, interrupted: str = "interrupted") -> Iterator[None]:
    """A command's body: an error -> ``error: <first line>`` on stderr and exit 2 (``debug``: the
    traceback); Ctrl-C -> ``interrupted`` on stderr and exit 130, SIGTERM / SIGHUP likewise (its first
    word then ``terminated``) and exit 143 / 129. A second signal while the run cleans up does not cut the cleanup short
    nor show a traceback; a third quits at once (see ``_Interrupts``). A ``SystemExit`` that is not the
    command's own (``sys.exit`` in a reward) is an error, exit 2."""
    import typer

    installed = _install(SIGNALS)
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        handler = installed[0] if installed is not None else None
        code = handler.exit_code if handler is not None and handler.count else 130
        if code != EXIT_CODES["SIGINT"] and interrupted.startswith("interrupted"):
            interrupted = "terminated" + interrupted[len("interrupted"):]
        typer.echo(interrupted, err=True)
        raise typer.Exit(code=code) from None
    except SystemExit as e:
        if debug:
            raise
        typer.echo(f"error: the run was stopped by sys.exit({e.code!r}) in a reward or other user code; it must "
                   f"return or raise an error, not exit", err=True)
        raise typer.Exit(code=2) from None
    except Exception as e:  # noqa: BLE001 - the boundary: one line, exit 2
        if debug:
            raise
        typer.echo(f"error: {one_line(e)}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        _restore(installed)


def one_line(error: BaseException) -> str:
    """The first line of ``error``'s message; an ``OSError`` as its reason, its file and the fix."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        where = f": {error.filename!r}" if error.filename is not None else ""
        fix = _OS_FIXES.get(error.errno)
        return f"{error.strerror} (errno {error.errno}){where}" + (f"; {fix}" if fix else "")
    return next((line for line in str(error).splitlines() if line.strip()), error.__class__.__name__)
