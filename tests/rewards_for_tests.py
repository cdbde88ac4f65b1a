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
