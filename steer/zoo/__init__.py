"""Small models and builders the project ships so that everything runs offline."""


def default_model(device=None, dtype=None):
    """The embedded default pipeline (the shapes world's text-to-image model, once shipped)."""
    try:
        from steer.zoo.shapes import pipeline
    except ImportError:
        pipeline = None
    if pipeline is None:
        raise FileNotFoundError(
            "no default model is bundled in this installation; pass a model with --model ID_OR_PATH "
            "(a Hugging Face model id in your cache or a local diffusers folder)"
        )
    return pipeline(device=device, dtype=dtype)


def default_options(device=None) -> dict:
    """The sampling settings the embedded default model was evaluated at (``num_inference_steps``,
    ``guidance_scale``) and, on the CPU (``device`` None means the CPU, where it loads), its
    denoiser chunk ``batch_size``; explicit options override them."""
    import torch

    from steer.zoo.shapes import CPU_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS

    options = {"num_inference_steps": DEFAULT_NUM_INFERENCE_STEPS, "guidance_scale": DEFAULT_GUIDANCE_SCALE}
    if torch.device(device or "cpu").type == "cpu":
        options["batch_size"] = CPU_BATCH_SIZE
    return options
