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
