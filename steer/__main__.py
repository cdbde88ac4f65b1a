"""``python -m steer`` (and ``accelerate launch -m steer ...``) runs the CLI."""
from steer.cli import main

if __name__ == "__main__":
    main()
