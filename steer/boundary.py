"""The command boundary of ``steer generate`` / ``steer finetune``: bad input (a ``SteerError`` or any
error) -> ``error: <first line>`` on stderr and exit 2; Ctrl-C -> a message and exit 130, with the
cleanup writes in progress allowed to finish (``deferred_interrupts``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Optional


class _Interrupts:
    """The SIGINT handler of a command (:func:`boundary`) and of :func:`deferred_interrupts`.

    The first Ctrl-C raises ``KeyboardInterrupt`` (inside a deferred block: when the block ends, so the
    writes in it complete); a second one while the run cleans up (writes its trace or checkpoint) is
    noted on stderr and does not interrupt that cleanup; a third quits at once with exit 130 (a file
    being written is then left as it was: writes are atomic)."""

    def __init__(self):
        self.count, self.raised, self.depth = 0, False, 0

    def __call__(self, signum, frame):
        self.count += 1
        if not self.raised and self.depth == 0:
            self.raised = True
            raise KeyboardInterrupt
        if self.count >= 3:
            os.write(2, b"interrupted again: quitting now\n")
            os._exit(130)
        if self.count == 2 or not self.raised:
            os.write(2, b"interrupted: finishing the writes in progress (Ctrl-C again to quit at once)\n")


def _install() -> Optional[tuple[_Interrupts, Any]]:
    """Install a fresh :class:`_Interrupts` (main thread only); returns it and the handler it replaced."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    handler = _Interrupts()
    try:
        previous = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # not the main interpreter / no signals here
        return None
    return handler, previous


def _restore(installed: Optional[tuple[_Interrupts, Any]]) -> None:
    if installed is not None:
        import signal

        signal.signal(signal.SIGINT, installed[1] if installed[1] is not None else signal.default_int_handler)


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
    traceback); Ctrl-C -> ``interrupted`` on stderr and exit 130. A second Ctrl-C while the run cleans
    up does not cut the cleanup short nor show a traceback; a third quits at once (see ``_Interrupts``)."""
    import typer

    installed = _install()
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        raise typer.Exit(code=130) from None
    except Exception as e:  # noqa: BLE001 - the boundary: one line, exit 2
        if debug:
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), e.__class__.__name__)
        typer.echo(f"error: {first}", err=True)
        raise typer.Exit(code=2) from None
    finally:
        _restore(installed)
