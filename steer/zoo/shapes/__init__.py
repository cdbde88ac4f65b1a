"""The shapes world (issue 8): a procedural world of coloured shapes with captions (``world``),
an exact checker of "does this image satisfy this caption" (``checker``) and a small CLIP trained
on the world (``clip``; its rewards in ``reward``).

``steer.zoo.shapes.clip()`` loads the shipped CLIP. The name is bound to the loader function here,
after the ``clip`` submodule is imported, so it stays the function; import the module's contents
with ``from steer.zoo.shapes.clip import ...``.

``steer.zoo.shapes.pipeline()`` loads the shipped text-to-image ``StableDiffusionPipeline``
(``generator``, trained by ``train_pipeline``); sample it with ``num_inference_steps=25`` and
``guidance_scale=4.0`` (``DEFAULT_NUM_INFERENCE_STEPS``, ``DEFAULT_GUIDANCE_SCALE``).
"""
from steer.zoo.shapes.clip import ShapesClip, clip  # noqa: F401  (loads no model until called)
from steer.zoo.shapes.generator import (  # noqa: F401,E402
    CPU_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS, pipeline,
)
