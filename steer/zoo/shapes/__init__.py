"""The shapes world (issue 8): a procedural world of coloured shapes with captions (``world``),
an exact checker of "does this image satisfy this caption" (``checker``) and a small CLIP trained
on the world (``clip``; rewards in ``reward``)."""
