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


def default_options() -> dict:
    """The sampling settings the embedded default model was evaluated at (``num_inference_steps``,
    ``guidance_scale``); explicit options override them."""
    from steer.zoo.shapes import DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS

    return {"num_inference_steps": DEFAULT_NUM_INFERENCE_STEPS, "guidance_scale": DEFAULT_GUIDANCE_SCALE}
