"""The ``steer`` command's entry point (``steer ...``, ``python -m steer ...``, ``accelerate launch -m steer ...``).

The current directory that ``python -m`` puts first on ``sys.path`` was taken off when the package
was imported (``steer._unshadow``): files in the working directory never shadow installed packages.
The CLI (and with it torch) is imported inside ``main`` so that a Ctrl-C during start-up is one line
and exit code 130, like a Ctrl-C anywhere else.
"""
import sys


def main() -> None:
    try:
        from steer.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted while starting\n")
        raise SystemExit(130) from None
    cli_main()


if __name__ == "__main__":
    main()
