"""The captions of the shapes world (``world``): the vocabulary, the three caption forms and their
parsing; and the caption algebra: the other spelling of a relation, one canonical spelling per
meaning, the perpendicular relations, and the corruptions that are false for every scene of a
caption (the hard negatives of the CLIPs and the checker's tests)."""
from __future__ import annotations

from typing import Optional, Sequence

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
RELATIONS = ("above", "below", "to the left of", "to the right of")
INVERSE = {"above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of"}
NUMBERS = {2: "two", 3: "three"}


def single_caption(color: str, shape: str) -> str:
    return f"a {color} {shape}"


def relation_caption(a: tuple[str, str], relation: str, b: tuple[str, str]) -> str:
    return f"a {a[0]} {a[1]} {relation} a {b[0]} {b[1]}"


def count_caption(color: str, shape: str, n: int) -> str:
    return f"{NUMBERS[n]} {color} {PLURALS[shape]}"


def _parse_relation(caption: str) -> tuple[tuple[str, str], str, tuple[str, str]]:
    w = caption.split()
    rel = " ".join(w[3:-3])
    return (w[1], w[2]), rel, (w[-2], w[-1])


def _objects_of(caption: str) -> tuple[list[tuple[str, str]], Optional[str]]:
    words = caption.split()
    if words[0] in NUMBERS.values():
        shape = next(s for s, p in PLURALS.items() if p == words[2])
        return [(words[1], shape)] * {v: k for k, v in NUMBERS.items()}[words[0]], None
    if len(words) == 3:
        return [(words[1], words[2])], None
    a, rel, b = _parse_relation(caption)
    return [a, b], rel


def _caption_of(objs: Sequence[tuple[str, str]], relation: Optional[str]) -> str:
    if relation is not None:
        return relation_caption(objs[0], relation, objs[1])
    if len(objs) == 1:
        return single_caption(*objs[0])
    return count_caption(objs[0][0], objs[0][1], len(objs))


def equivalent(caption: str) -> str:
    """The other spelling of the same meaning ("B below A" for "A above B"); the caption itself when
    it has no relation."""
    objs, rel = _objects_of(caption)
    return caption if rel is None else relation_caption(objs[1], INVERSE[rel], objs[0])


def canonical(caption: str) -> str:
    """One spelling per meaning: "A below B" and "B above A" describe the same scenes, so both map to
    the alphabetically first of the two; other captions are their own canonical form."""
    return min(caption, equivalent(caption))


def perpendicular(caption: str) -> list[str]:
    """The caption with each relation of the other axis ("A above B" -> "A to the left of B", "A to
    the right of B"): false for every scene realising it, since a related pair is placed clearly
    along one axis (``RELATION_DOMINANCE``). Empty when the caption has no relation."""
    objs, rel = _objects_of(caption)
    if rel is None:
        return []
    return [relation_caption(objs[0], r, objs[1]) for r in RELATIONS if r not in (rel, INVERSE[rel])]


def mismatches(caption: str) -> dict[str, list[str]]:
    """Captions that are false for every scene realising ``caption``, by kind of corruption:
    ``relation`` (inverse relation or swapped order), ``color`` (one object's colour changed, or
    the two colours swapped), ``shape`` (likewise for shapes), ``count`` (another number)."""
    objs, rel = _objects_of(caption)
    out: dict[str, list[str]] = {"relation": [], "color": [], "shape": [], "count": []}
    if rel is not None:
        out["relation"] = [relation_caption(objs[0], INVERSE[rel], objs[1]), relation_caption(objs[1], rel, objs[0])]
        (c1, s1), (c2, s2) = objs
        if c1 != c2 and s1 != s2:
            out["color"].append(relation_caption((c2, s1), rel, (c1, s2)))
            out["shape"].append(relation_caption((c1, s2), rel, (c2, s1)))
    uniform = rel is None  # single and count captions: all objects alike
    for i in range(len(objs) if rel is not None else 1):
        for c in COLORS:
            if c != objs[i][0]:
                new = [(c, o[1]) if uniform or j == i else o for j, o in enumerate(objs)]
                out["color"].append(_caption_of(new, rel))
        for s in SHAPES:
            if s != objs[i][1]:
                new = [(o[0], s) if uniform or j == i else o for j, o in enumerate(objs)]
                out["shape"].append(_caption_of(new, rel))
    if rel is None:
        out["count"] = [_caption_of([objs[0]] * n, None) for n in (1, 2, 3) if n != len(objs)]
    return {k: sorted(set(v) - {caption}) for k, v in out.items()}
