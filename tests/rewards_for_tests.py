"""Small real reward functions used by the API / CLI tests (reachable as dotted paths)."""
import torch


def brightness(images, prompts):
    """Mean pixel value per image: a real, differentiable function of the image."""
    return images.float().mean(dim=(1, 2, 3))


def redness(images, prompts):
    """Red minus the other channels: differentiable, prompt-independent."""
    return (images[:, 0] - 0.5 * (images[:, 1] + images[:, 2])).mean(dim=(1, 2))


def nan_reward(images, prompts):
    return torch.full((images.shape[0],), float("nan"))


brightness.differentiable = True
redness.differentiable = True


def interrupt_on_stop(images, prompts):
    """Brightness, but a prompt 'stop' behaves like the user pressing Ctrl-C."""
    if "stop" in prompts:
        raise KeyboardInterrupt
    return brightness(images, prompts)


FAIL_ON: set = set()  # prompts on which `crashes_on_marked` raises (tests toggle it between runs)


def crashes_on_marked(images, prompts):
    """Brightness, but a reward model that crashes on the prompts in ``FAIL_ON`` (a fault mid-run)."""
    bad = [p for p in prompts if p in FAIL_ON]
    if bad:
        raise RuntimeError(f"reward model crashed on {bad[0]!r}")
    return brightness(images, prompts)


def kill_on_marked(images, prompts):
    """Brightness, but the process is SIGKILLed at a prompt 'die' (a run killed mid-way)."""
    if "die" in prompts:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    return brightness(images, prompts)


def slow_and_watched(images, prompts):
    """Brightness after a 0.2 s sleep, for the Ctrl-C tests (``STEER_TEST_MARKS=DIR``): touches
    ``DIR/scored`` at every call; once ``DIR/interrupted`` exists every atomic write touches
    ``DIR/writing`` and takes 0.5 s mid-file, so a test can press Ctrl-C mid-run and again mid-write."""
    import os
    import time
    from pathlib import Path

    from steer import atomic

    marks = Path(os.environ["STEER_TEST_MARKS"])
    if not getattr(atomic.atomic_write, "watched", False):
        real = atomic.atomic_write

        def watched(path, write):
            if not (marks / "interrupted").exists():
                return real(path, write)

            def slow(f):
                (marks / "writing").touch()
                time.sleep(0.5)
                write(f)

            return real(path, slow)

        watched.watched = True
        atomic.atomic_write = watched  # what every atomic write (write_json, save_png, ...) calls
    (marks / "scored").touch()
    time.sleep(0.2)
    return brightness(images, prompts)


def slow_brightness(images, prompts):
    """Brightness after sleeping ``$STEER_TEST_SLOW`` seconds (default 2): a reward still scoring
    when a test kills its server."""
    import os
    import time

    time.sleep(float(os.environ.get("STEER_TEST_SLOW", "2")))
    return brightness(images, prompts)


def brightness_or_fault(images, prompts):
    """Brightness, but a model that crashes on a prompt 'crash' and scores NaN for a prompt 'nan'
    (served by tests/test_reward_server.py: HTTP 500 and 422)."""
    if "crash" in prompts:
        raise RuntimeError("the model crashed")
    out = brightness(images, prompts)
    return torch.where(torch.tensor([p == "nan" for p in prompts]), torch.tensor(float("nan")), out)
