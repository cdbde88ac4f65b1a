"""``python -m steer`` (and ``accelerate launch -m steer ...``) runs the CLI.

The current directory that ``python -m`` puts first on ``sys.path`` was taken off when the package
was imported (``steer._unshadow``): files in the working directory never shadow installed packages.
"""
from steer.cli import main

if __name__ == "__main__":
    main()
