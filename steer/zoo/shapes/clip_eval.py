"""Evaluation of a shapes CLIP: retrieval among 100 captions and true-vs-relation-swapped caption,
on scenes never trained on (``test`` split: training captions, unseen scenes; ``heldout`` split:
captions never trained on)."""
from __future__ import annotations

import torch

from steer.zoo.shapes import world
from steer.zoo.shapes.clip import image_embeds, text_embeds


@torch.no_grad()
def retrieval_at_100(model, tokenizer, images: torch.Tensor, captions: list[str]) -> float:
    """Share of images whose best caption among their group of 100 means their own: the same text,
    or its equivalent with the objects swapped and the relation inverted ("a red circle above a blue
    square" = "a blue square below a red circle"; ``world.canonical``), which is as true of the image."""
    hits = total = 0
    for s in range(0, len(captions) - 99, 100):
        caps = captions[s:s + 100]
        sims = image_embeds(model, images[s:s + 100]) @ text_embeds(model, tokenizer, caps).T  # (100, 100)
        hits += sum(world.canonical(caps[j]) == world.canonical(caps[i]) for i, j in enumerate(sims.argmax(1).tolist()))
        total += len(caps)
    return hits / max(total, 1)


@torch.no_grad()
def relation_swap_accuracy(model, tokenizer, images: torch.Tensor, captions: list[str]) -> float:
    """Share of (relational scene, relation-swapped caption) pairs where the true caption scores
    higher; both swaps (inverse relation, swapped order) are counted."""
    keep = [i for i, c in enumerate(captions) if world.mismatches(c)["relation"]]
    img = image_embeds(model, images[keep])  # (N, D)
    wins = total = 0
    for row, i in zip(img, keep):
        texts = [captions[i]] + world.mismatches(captions[i])["relation"]
        s = text_embeds(model, tokenizer, texts) @ row  # (1 + k,)
        wins += int((s[0] > s[1:]).sum())
        total += len(texts) - 1
    return wins / max(total, 1)


def evaluate(model, tokenizer, n: int = 500, seed: int = 1234) -> dict[str, float]:
    """The targets of issue 8 (retrieval@100 >= 90%, relation swap >= 80%) on both splits."""
    out = {}
    for split in ("test", "heldout"):
        images, captions = world.batch(n, seed=seed, split=split)
        out[f"{split}: image->caption retrieval among 100"] = retrieval_at_100(model, tokenizer, images, captions)
        out[f"{split}: true vs relation-swapped caption"] = relation_swap_accuracy(model, tokenizer, images, captions)
    return out
