"""The exact checker of the shapes world: does an image satisfy its caption?

``check(images, captions) -> BoolTensor`` parses each caption with the world's grammar (closed
world: the caption lists every object in the scene), segments the image by colour, labels
8-connected components, classifies each component's shape by template matching and compares the detected objects,
their count and (for relational captions) their centroids with the caption. It is the oracle for
evaluation and is never used as a training signal.

Thresholds (fractions are of the image side ``H``; tuned on rendered scenes and on the same scenes
blurred and noised to imitate a small diffusion model's output, see ``benchmarks/shapes_checker.py``):

=====================  =======  ===========================================================
name                   value    meaning
=====================  =======  ===========================================================
``FG_THRESHOLD``       0.35     a pixel is foreground when its largest channel is >= this
                                (the background is black; an anti-aliased edge keeps its hue)
``COLOR_COS``          0.90     foreground pixels are given the palette colour of highest
                                cosine similarity (hue, independent of brightness) if it is
                                >= this, otherwise the colour "unknown"
``MIN_AREA``           6 px     components smaller than ``MIN_AREA * (H / 32) ** 2`` are
                                noise and ignored; larger "unknown" ones count as an object
                                of no palette colour (so the scene matches no caption)
``TEMPLATE_BLURS``     0, 0.5,  a component's shape is the one whose ideal template (same area
                       0.8 px   and centroid, rendered like the world, blurred by the best of
                                these Gaussian stds) is nearest in L1 to the component's soft
                                coverage (brightness-normalised projection on its colour)
``CHECK_MARGIN``       0.08     relation "A above B": centroid offset along the named axis
                                >= ``CHECK_MARGIN * H`` and >= the offset along the other
                                axis (the world draws them with 0.15 and 1.5x)
=====================  =======  ===========================================================
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from steer.zoo.shapes.world import COLORS, NUMBERS, PLURALS, SHAPES, Obj, coverage, relation_holds

FG_THRESHOLD = 0.35
COLOR_COS = 0.90
MIN_AREA = 6.0
CHECK_MARGIN = 0.08
RELATION_CHECK_DOMINANCE = 1.0
TEMPLATE_BLURS = (0.0, 0.5, 0.8)
_PALETTE = list(COLORS)
_UNKNOWN = "unknown"
_RELATION_WORDS = {("above",): "above", ("below",): "below",
                   ("left", "of"): "to the left of", ("to", "the", "left", "of"): "to the left of",
                   ("right", "of"): "to the right of", ("to", "the", "right", "of"): "to the right of"}
GRAMMAR = ("'a <colour> <shape>', 'a <colour> <shape> <above|below|to the left of|to the right of> "
           "a <colour> <shape>', '<two|three> <colour> <shapes>' with colour in "
           f"{tuple(COLORS)} and shape in {SHAPES}")


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: the objects (colour, shape) and, for two objects, a relation."""

    objects: tuple[tuple[str, str], ...]
    relation: Optional[str] = None


@dataclass(frozen=True)
class Detection:
    """One detected object: colour (or "unknown"), shape, centroid in pixels, area in pixels."""

    color: str
    shape: str
    cx: float
    cy: float
    area: int


# ----------------------------------------------------------------------------- parsing
def _object(words: Sequence[str], caption: str) -> tuple[str, str]:
    if len(words) != 3 or words[0] not in ("a", "an") or words[1] not in COLORS or words[2] not in SHAPES:
        raise ValueError(f"caption {caption!r} is outside the shapes grammar; use {GRAMMAR}")
    return words[1], words[2]


def parse(caption: str) -> Spec:
    """Parse a caption of the grammar into a ``Spec``; a clear ``ValueError`` otherwise."""
    words = caption.lower().strip().rstrip(".").split()
    numbers = {v: k for k, v in NUMBERS.items()}
    if len(words) == 3 and words[0] in numbers:
        shape = {p: s for s, p in PLURALS.items()}.get(words[2])
        if words[1] not in COLORS or shape is None:
            raise ValueError(f"caption {caption!r} is outside the shapes grammar; use {GRAMMAR}")
        return Spec(((words[1], shape),) * numbers[words[0]])
    if len(words) == 3:
        return Spec((_object(words, caption),))
    rel = _RELATION_WORDS.get(tuple(words[3:-3]))
    if len(words) < 7 or rel is None:
        raise ValueError(f"caption {caption!r} is outside the shapes grammar; use {GRAMMAR}")
    return Spec((_object(words[:3], caption), _object(words[-3:], caption)), rel)


# ----------------------------------------------------------------------------- segmentation
def _color_labels(images: Tensor) -> Tensor:
    """Per-pixel palette index, len(palette) for unknown colour, -1 for background. (B, H, W)"""
    palette = F.normalize(torch.tensor(list(COLORS.values()), dtype=torch.float32), dim=1)  # (K, 3)
    x = images.float().clamp(0, 1)  # (B, 3, H, W)
    cos = torch.einsum("kc,bchw->bkhw", palette, F.normalize(x, dim=1, eps=1e-6))  # (B, K, H, W)
    best, idx = cos.max(dim=1)  # (B, H, W)
    idx = torch.where(best >= COLOR_COS, idx, torch.full_like(idx, len(palette)))
    return torch.where(x.amax(dim=1) >= FG_THRESHOLD, idx, torch.full_like(idx, -1))


def _components(mask: Tensor) -> Tensor:
    """8-connected component labels of boolean masks (N, H, W) by max-label propagation;
    0 is background, labels are unique within each mask. (N, H, W)"""
    n, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).reshape(1, h, w)
    labels = torch.where(mask, ids, torch.zeros(()))  # (N, H, W)
    for _ in range(h * w):
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * mask  # (N, H, W)
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


def _alpha(image: np.ndarray, region: np.ndarray, color: str) -> np.ndarray:
    """Soft coverage of ``color`` inside ``region``: the pixel's projection on the palette colour,
    scaled so the component's brightest pixel is 1 (brightness-invariant). (H, W)"""
    c = np.asarray(COLORS[color], dtype=np.float32)  # (3,)
    a = np.einsum("c,chw->hw", c, image) / c.dot(c) * region  # (H, W)
    return np.clip(a / max(float(a.max()), 1e-6), 0, 1)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a map (H, W) with std ``sigma`` pixels (identity for 0)."""
    if sigma <= 0:
        return x
    r = np.arange(-2, 3)
    k = np.exp(-r ** 2 / (2 * sigma ** 2))
    k = k / k.sum()  # (5,)
    p = np.pad(x, 2)
    x = sum(k[i] * p[:, i:i + x.shape[1]] for i in range(5))  # (H+4, W)
    return sum(k[i] * x[i:i + p.shape[0] - 4] for i in range(5))  # (H, W)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation of a mask (H, W)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[i:i + h, j:j + w] for i in range(3) for j in range(3)])


def _template_error(alpha: np.ndarray, shape: str) -> float:
    """L1 distance, relative to the area, between a soft coverage map and the ideal ``shape`` of
    the same area and centroid (moment-matched template), blurred by the best of ``TEMPLATE_BLURS``."""
    area = float(alpha.sum())
    ys, xs = np.mgrid[0:alpha.shape[0], 0:alpha.shape[1]]
    mx, my = float((xs * alpha).sum()) / area + 0.5, float((ys * alpha).sum()) / area + 0.5
    side = {"circle": 2 * math.sqrt(area / math.pi), "square": math.sqrt(area), "triangle": math.sqrt(2 * area)}[shape]
    cy = my - side / 6 if shape == "triangle" else my  # a triangle's centroid sits 1/6 below its bbox centre
    template = coverage(Obj("red", shape, mx, cy, side), alpha.shape[-1])  # (H, W)
    return min(float(np.abs(alpha - _blur(template, s)).sum()) for s in TEMPLATE_BLURS) / area


def _shape(alpha: np.ndarray) -> str:
    """The shape whose moment-matched template fits the soft coverage best."""
    return min(SHAPES, key=lambda s: _template_error(alpha, s))


def _detections(image: np.ndarray, labels: np.ndarray, color: np.ndarray, min_area: float) -> list[Detection]:
    """Detections of one image (3, H, W) from its component labels (K+1, H, W) and colour map (H, W)."""
    out = []
    names = _PALETTE + [_UNKNOWN]
    for k, lab in enumerate(labels):
        for comp in np.unique(lab[lab > 0]).tolist():
            mask = lab == comp  # (H, W)
            rows, cols = np.nonzero(mask)
            if rows.size < min_area:
                continue
            shape = "unknown"
            if names[k] != _UNKNOWN:  # grow by one pixel into the background to catch faint edges
                grown = _dilate(mask)
                shape = _shape(_alpha(image, grown & ((color == k) | (color < 0)), names[k]))
            out.append(Detection(names[k], shape, float(cols.mean()) + 0.5, float(rows.mean()) + 0.5, int(rows.size)))
    return out


def _validate(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (B, 3, H, W) in [0, 1], got {got}")


def detect(images: Tensor) -> list[list[Detection]]:
    """Detected objects of every image of a batch (B, 3, H, W) in [0, 1]."""
    _validate(images)
    images = images.detach().cpu()
    color = _color_labels(images)  # (B, H, W)
    k = len(_PALETTE) + 1
    masks = color[:, None] == torch.arange(k).reshape(1, k, 1, 1)  # (B, K+1, H, W)
    labels = _components(masks.flatten(0, 1)).reshape(masks.shape)  # (B, K+1, H, W)
    min_area = MIN_AREA * (images.shape[-1] / 32) ** 2
    x, labels, color = images.float().numpy(), labels.numpy(), color.numpy()
    return [_detections(x[b], labels[b], color[b], min_area) for b in range(images.shape[0])]


def describe(image: Tensor) -> list[Detection]:
    """The detected objects of one image (3, H, W): for debugging."""
    if isinstance(image, Tensor) and image.ndim == 3:
        image = image[None]
    return detect(image)[0]


# ----------------------------------------------------------------------------- verification
def satisfies(detections: Sequence[Detection], spec: Spec, size: int) -> bool:
    """Whether detected objects realise a spec exactly (closed world)."""
    found = sorted((d.color, d.shape) for d in detections)
    if found != sorted(spec.objects):
        return False
    if spec.relation is None:
        return True
    a, b = spec.objects
    for da, db in itertools.permutations(detections, 2):
        if (da.color, da.shape) == a and (db.color, db.shape) == b and relation_holds(
                (da.cx, da.cy), (db.cx, db.cy), spec.relation, CHECK_MARGIN * size, RELATION_CHECK_DOMINANCE):
            return True
    return False


def check(images: Tensor, captions: Sequence[str]) -> Tensor:
    """Whether each image (B, 3, H, W) in [0, 1] satisfies its caption: BoolTensor (B,)."""
    _validate(images)
    if isinstance(captions, str) or len(captions) != images.shape[0]:
        n = 1 if isinstance(captions, str) else len(captions)
        raise ValueError(f"check: {images.shape[0]} images but {n} captions; pass one caption per image (a list)")
    specs = [parse(c) for c in captions]
    found = detect(images)
    return torch.tensor([satisfies(d, s, images.shape[-1]) for d, s in zip(found, specs)], dtype=torch.bool)
