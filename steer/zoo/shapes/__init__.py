"""The shapes world (issue 8): a procedural world of coloured shapes with captions (``world``),
an exact checker of "does this image satisfy this caption" (``checker``) and a small CLIP trained
on the world (``clip``; its rewards in ``reward``).

``steer.zoo.shapes.clip()`` loads the shipped CLIP. The name is bound to the loader function here,
after the ``clip`` submodule is imported, so it stays the function; import the module's contents
with ``from steer.zoo.shapes.clip import ...``.
"""
from steer.zoo.shapes.clip import ShapesClip, clip  # noqa: F401  (loads no model until called)
