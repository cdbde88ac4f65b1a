"""The shapes world: procedurally rendered scenes of coloured shapes with captions.

A scene is 1-3 non-overlapping shapes (circle, square, triangle) in one of four well-separated
colours on a black background, rendered at ``size`` x ``size`` pixels (32 by default) with 4x4
supersampled anti-aliasing. Every caption describes the *whole* scene (closed world):

==========  ===============================================  =====================================
kind        caption                                          scene
==========  ===============================================  =====================================
single      ``a red circle``                                 exactly that one object
relation    ``a red circle above a blue square``             exactly those two objects; relations
            (``above``, ``below``, ``to the left of``,       hold between area centroids with a
            ``to the right of``)                             clear margin (see ``RELATION_MARGIN``)
count       ``two green triangles`` / ``three ...``          exactly n objects, all that kind
==========  ===============================================  =====================================

Relational scenes are drawn so the named axis dominates: the centroid offset along it is at least
``RELATION_MARGIN * size`` and at least ``RELATION_DOMINANCE`` times the offset along the other
axis, so "above" is never also "to the left of" (the checker requires a looser version of this).

Splits: ``train`` and ``test`` draw from the training captions (disjoint seed streams); ``heldout``
draws only from ``HELDOUT_CAPTIONS``, a fixed set never yielded by ``train``: every relational
caption between one of ``HELDOUT_PAIRS`` (13 of the 66 unordered object pairs, both orders, all
four relations: 104 captions) plus ``HELDOUT_COUNTS``. Single-object captions (only 12 exist) are
all trained on; their held-out evaluation uses ``test`` scenes.
"""
from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

# The caption grammar (vocabulary, the three caption forms, parsing) and its algebra (equivalent
# spellings, perpendicular relations, corruptions) live in ``captions.py``; re-exported here because
# callers think of them as part of the world.
from steer.zoo.shapes.captions import (COLORS, INVERSE, NUMBERS, PLURALS, RELATIONS, SHAPES,  # noqa: F401
                                       _parse_relation, canonical, count_caption, equivalent, mismatches,
                                       perpendicular, relation_caption, single_caption)

KINDS = ("single", "relation", "count")
KIND_WEIGHTS = (0.3, 0.5, 0.2)
SIZE_RANGE = (0.22, 0.38)  # object bbox side as a fraction of the image side
GAP = 0.06  # minimum empty border between object bboxes, fraction of the image side
EDGE = 0.03  # minimum distance from an object bbox to the image border
RELATION_MARGIN = 0.15  # world: centroid offset along the named axis >= this * size
RELATION_DOMINANCE = 1.5  # world: ... and >= this * |offset along the other axis|
SUPERSAMPLE = 4
SPLITS = ("train", "test", "heldout")
OBJECTS = tuple(itertools.product(COLORS, SHAPES))  # 12 (colour, shape) kinds


def _heldout_pairs() -> tuple[tuple[tuple[str, str], tuple[str, str]], ...]:
    pairs = list(itertools.combinations(OBJECTS, 2))
    random.Random(8).shuffle(pairs)  # fixed forever: changing it changes the held-out set
    return tuple(sorted(pairs[:13]))


HELDOUT_PAIRS = _heldout_pairs()
HELDOUT_COUNTS = (("yellow", "square", 3), ("blue", "triangle", 2), ("red", "circle", 3))


@dataclass(frozen=True)
class Obj:
    """One shape: colour and shape names, bbox centre and side in pixels."""

    color: str
    shape: str
    cx: float
    cy: float
    side: float


@dataclass(frozen=True)
class Scene:
    """A caption and the objects that realise it (``relation`` only for relational captions)."""

    caption: str
    kind: str
    objects: tuple[Obj, ...]
    relation: Optional[str] = None


def all_captions() -> dict[str, list[str]]:
    """Every caption of the grammar, by kind (12 single, 528 relation, 24 count)."""
    rel = [relation_caption(a, r, b) for a, b in itertools.permutations(OBJECTS, 2) for r in RELATIONS]
    return {"single": [single_caption(c, s) for c, s in OBJECTS], "relation": rel,
            "count": [count_caption(c, s, n) for c, s in OBJECTS for n in NUMBERS]}


def _heldout_captions() -> frozenset[str]:
    rel = [relation_caption(a, r, b) for p in HELDOUT_PAIRS for a, b in (p, p[::-1]) for r in RELATIONS]
    return frozenset(rel + [count_caption(c, s, n) for c, s, n in HELDOUT_COUNTS])


HELDOUT_CAPTIONS = _heldout_captions()


def split_captions(split: str) -> dict[str, list[str]]:
    """The captions a split draws from, by kind."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    keep = (lambda c: c in HELDOUT_CAPTIONS) if split == "heldout" else (lambda c: c not in HELDOUT_CAPTIONS)
    return {k: [c for c in v if keep(c)] for k, v in all_captions().items() if any(keep(c) for c in v)}


# ----------------------------------------------------------------------------- rasterization
@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ss = SUPERSAMPLE
    t = (np.arange(size * ss) + 0.5) / ss  # sub-pixel centres in pixel units
    return np.meshgrid(t, t, indexing="xy")  # x (S, S), y (S, S)


def coverage(obj: Obj, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one object, (size, size)."""
    x, y = _grid(size)
    h = obj.side / 2
    if obj.shape == "circle":
        inside = (x - obj.cx) ** 2 + (y - obj.cy) ** 2 <= h * h
    elif obj.shape == "square":
        inside = (np.abs(x - obj.cx) <= h) & (np.abs(y - obj.cy) <= h)
    elif obj.shape == "triangle":  # apex up, base at the bottom of the bbox
        top = obj.cy - h
        inside = (y <= obj.cy + h) & (np.abs(x - obj.cx) <= (y - top) / 2)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; choose from {SHAPES}")
    ss = SUPERSAMPLE
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))  # (size, size)


def centroid(cov: np.ndarray) -> tuple[float, float]:
    """Area centroid (x, y) in pixel units of a coverage map."""
    ys, xs = np.mgrid[0:cov.shape[0], 0:cov.shape[1]]
    w = cov.sum()
    return float((xs * cov).sum() / w + 0.5), float((ys * cov).sum() / w + 0.5)


def render(objects: Sequence[Obj], size: int = 32) -> torch.Tensor:
    """Render objects on black: float image (3, size, size) in [0, 1]."""
    img = np.zeros((3, size, size), dtype=np.float32)
    for obj in objects:
        img += np.asarray(COLORS[obj.color], dtype=np.float32)[:, None, None] * coverage(obj, size)[None]
    return torch.from_numpy(np.clip(img, 0.0, 1.0))  # (3, H, W)


# ----------------------------------------------------------------------------- placement
def _random_obj(rng: np.random.Generator, color: str, shape: str, size: int) -> Obj:
    side = rng.uniform(*SIZE_RANGE) * size
    lo, hi = EDGE * size + side / 2, size - EDGE * size - side / 2
    return Obj(color, shape, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), float(side))


def _apart(a: Obj, b: Obj, size: int) -> bool:
    need = (a.side + b.side) / 2 + GAP * size
    return abs(a.cx - b.cx) >= need or abs(a.cy - b.cy) >= need


def relation_holds(ca: tuple[float, float], cb: tuple[float, float], relation: str,
                   margin: float, dominance: float) -> bool:
    """Whether centroid ``ca`` is ``relation`` of ``cb``: the offset along the named axis is at
    least ``margin`` pixels and at least ``dominance`` times the offset along the other axis."""
    dx, dy = cb[0] - ca[0], cb[1] - ca[1]  # image y grows downwards
    along, other = {"above": (dy, dx), "below": (-dy, dx),
                    "to the left of": (dx, dy), "to the right of": (-dx, dy)}[relation]
    return along >= margin and along >= dominance * abs(other)


def _place(rng: np.random.Generator, kinds: Sequence[tuple[str, str]], size: int,
           relation: Optional[str] = None, tries: int = 1000) -> tuple[Obj, ...]:
    for _ in range(tries):
        objs = tuple(_random_obj(rng, c, s, size) for c, s in kinds)
        if not all(_apart(a, b, size) for a, b in itertools.combinations(objs, 2)):
            continue
        if relation is not None:
            ca, cb = (centroid(coverage(o, size)) for o in objs)
            if not relation_holds(ca, cb, relation, RELATION_MARGIN * size, RELATION_DOMINANCE):
                continue
        return objs
    raise RuntimeError(f"could not place {list(kinds)} ({relation}) in {tries} tries at size {size}")


# ----------------------------------------------------------------------------- sampling
def scene_for(caption: str, rng: np.random.Generator, size: int = 32) -> Scene:
    """A random scene realising a caption of the grammar."""
    words = caption.split()
    if words[0] in NUMBERS.values():
        n = {v: k for k, v in NUMBERS.items()}[words[0]]
        shape = next(s for s, p in PLURALS.items() if p == words[2])
        return Scene(caption, "count", _place(rng, [(words[1], shape)] * n, size))
    if len(words) == 3:
        return Scene(caption, "single", _place(rng, [(words[1], words[2])], size))
    a, rel, b = _parse_relation(caption)
    return Scene(caption, "relation", _place(rng, [a, b], size, relation=rel), relation=rel)


def sample_scene(seed: int, index: int, split: str = "train", size: int = 32) -> Scene:
    """Scene ``index`` of the stream (``seed``, ``split``): independent of every other index."""
    caps = split_captions(split)
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    kinds = [k for k in KINDS if k in caps]
    weights = np.array([KIND_WEIGHTS[KINDS.index(k)] for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
    caption = caps[kind][rng.integers(len(caps[kind]))]
    return scene_for(caption, rng, size)


def dataset(n: int, seed: int = 0, split: str = "train", size: int = 32,
            start: int = 0) -> Iterator[tuple[torch.Tensor, str]]:
    """Yield ``n`` (image (3, size, size) in [0, 1], caption) pairs, deterministic in the seed."""
    for i in range(start, start + n):
        scene = sample_scene(seed, i, split, size)
        yield render(scene.objects, size), scene.caption


def batch(n: int, seed: int = 0, split: str = "train", size: int = 32,
          start: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``n`` scenes stacked: images (n, 3, size, size) and their captions."""
    pairs = list(dataset(n, seed, split, size, start))
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]
