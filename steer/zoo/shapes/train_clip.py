"""Train the shapes CLIP contrastively on the shapes world, with hard negatives.

    python -m steer.zoo.shapes.train_clip --out DIR [--max-minutes 15]

``python -m steer.zoo.shapes.train`` runs this twice: the base CLIP (the defaults: 15 minutes on 2
CPU cores, about 1600 steps), whose text tower conditions the pipeline, then the reward CLIP
``shapes-clip``, fine-tuned from the base (``init``) for 5 minutes (about 400-470 steps, learning
rate 5e-4, warm-up 20) with both recipe options below and relation weight 0.5. Shipped (``clip_eval``:
unseen scenes / held-out captions): base, 15 min, 1684 steps: retrieval among 100 91.8% / 71.0%,
true vs relation-swapped caption 99.2% / 96.1%; the reward CLIP fine-tuned from it, 5 min, 437 steps:
retrieval 95.4% / 83.2%, swap 99.2% / 96.2% (a retrieved caption that means the true one counts).
Earlier runs: a 15-min base at 89.2% / 70.6% fine-tuned to 93.8% / 78.4% (swap 99.8% / 97.3%); a
14-min base at 86.2% / 71.2% to 92.0% / 77.6% (98.6% / 96.1%) -- the base's minutes (steps on a
busier machine) move its retrieval by a few points, and fine-tuning adds 4-6.

The two recipe options, off by default: ``canonical_positives`` (equivalent spellings are positives,
not negatives) and ``perpendicular_negatives`` (the other axis's relations join the hard negatives
and the relation term; in the second run, 33 of the base CLIP's 69 retrieval errors on unseen
scenes pick a perpendicular relation, "above" for "left of", against 21 of the reward CLIP's 40). Measured
from scratch, seed 0, one run each (test / held-out retrieval, swap): defaults, 15 min: 89.2 / 70.6,
100; canonical positives, 15 min: 89.0 / 66.8, 99.6; both, relation weight 1, 17 min: 80.4 / 78.2,
94.4 (shape confusions grew); both, relation weight 0.5, 17 min: 91.8 / 82.4, 98.3 -- but a
pipeline trained on that CLIP's text tower reached only 17.3% on held-out relational captions (81.3%
single) in 38 min and 19.2% (72.9%) in 40 min, against 30.8% / 87.5% on the default recipe's tower.
Hence the two CLIPs, as in the real setting (SD's text encoder is a base CLIP; PickScore and HPSv2
are CLIPs fine-tuned from one on a harder objective).

Loss: the symmetric CLIP InfoNCE (Radford et al. 2021) with three changes, because the world's
captions repeat and its hard negatives matter: (1) the text side of a batch holds every distinct true
caption plus, per image, its relation swaps and ``negatives`` colour/shape/count corruptions
(``world.mismatches``); (2) targets are multi-positive: image i's targets are all texts equal to its
caption (uniform; with ``canonical_positives``, all texts that mean it, its equivalent spelling
included), and text t's targets are all images whose caption is t; (3) a NegCLIP-style relation term
(Yuksekgonul et al. 2023, "When and why vision-language models behave like bags-of-words"): for
every relational image, a softmax over its true caption and its false relations
(``relation_negatives``: inverse relation and swapped order, plus the two relations of the other
axis with ``perpendicular_negatives``), weighted by ``relation_weight`` -- without it the swap
accuracy stayed at chance (50.6%), since one swap among ~250 batch texts carries little gradient.
Only ``train``-split captions are ever seen. The checker is never used. Training data is a fixed
pool of ``pool`` rendered scenes. Training stops after ``steps`` steps or ``max_minutes`` of wall clock (render included), whichever comes
first; the learning rate (``schedule.warmup_cosine``) warms up over ``warmup`` steps and its cosine
follows whichever limit is nearer its end, so a slow (shared) machine gets fewer but fully annealed
steps.
"""
from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from steer.zoo.shapes import world
from steer.zoo.shapes.clip import WEIGHTS_DIR, clip_config, image_embeds, save, text_embeds
from steer.zoo.shapes.schedule import warmup_cosine


@dataclass
class ClipTrainConfig:
    out: str = str(WEIGHTS_DIR)
    steps: int = 10000  # the wall-clock cap usually binds first
    batch_size: int = 64
    negatives: int = 3
    pool: int = 16000
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    relation_weight: float = 1.0
    canonical_positives: bool = False  # equivalent spellings shown and counted as positives
    perpendicular_negatives: bool = False  # the other axis's relations join the hard negatives
    max_minutes: float = 15.0  # wall-clock cap (render included); the cosine schedule follows it
    init: str = ""  # a saved shapes CLIP to fine-tune from (empty: random init)
    seed: int = 0
    threads: int = 2


@functools.lru_cache(maxsize=1)
def render_pool(n: int, seed: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``n`` training scenes: uint8 images (n, 3, 32, 32) and captions. Cached: ``train`` renders the
    same pool for the base CLIP and for the reward CLIP fine-tuned from it (read-only; ~25 s each)."""
    images, captions = world.batch(n, seed=seed, split="train")
    return (images * 255).round().to(torch.uint8), tuple(captions)


def relation_negatives(caption: str, perpendicular_too: bool = False) -> list[str]:
    """False relations between the caption's two objects, one spelling each: the two swaps
    (``world.mismatches``) and, with ``perpendicular_too``, the two perpendicular relations."""
    return world.mismatches(caption)["relation"] + (world.perpendicular(caption) if perpendicular_too else [])


def hard_negatives(caption: str, k: int, rng: np.random.Generator, perpendicular_too: bool = False) -> list[str]:
    """False captions for ``caption``: its ``relation_negatives`` when it has a relation, plus ``k``
    colour/shape/count corruptions."""
    wrong = world.mismatches(caption)
    rest = wrong["color"] + wrong["shape"] + wrong["count"]
    picks = relation_negatives(caption, perpendicular_too)
    picks += [rest[i] for i in rng.choice(len(rest), size=min(k, len(rest)), replace=False)]
    return [c for c in picks if c not in world.HELDOUT_CAPTIONS]


def batch_texts(captions: list[str], k: int, rng: np.random.Generator, canonical_positives: bool = False,
                perpendicular_negatives: bool = False) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct texts of a batch, the positive mask (B, T) and, for the relation term, the rows of
    relational images (R,) with their [true, ``relation_negatives``...] text columns (R, 3), or (R, 5)
    with ``perpendicular_negatives``.

    Texts are every caption and its hard negatives. Text j is a positive of image i when it equals
    image i's caption; with ``canonical_positives``, when it means it (same ``world.canonical`` form),
    and each caption's equivalent spelling (``world.equivalent``) joins the texts, so an equivalent
    spelling -- of its own caption or of another image's -- is never pushed away."""
    spellings = [world.equivalent(c) for c in captions] if canonical_positives else []
    negatives = [n for c in captions for n in hard_negatives(c, k, rng, perpendicular_negatives)]
    texts = list(dict.fromkeys(captions + [e for e in spellings if e not in world.HELDOUT_CAPTIONS] + negatives))
    index = {t: j for j, t in enumerate(texts)}
    meaning = world.canonical if canonical_positives else (lambda t: t)
    text_meaning = [meaning(t) for t in texts]
    pos = torch.tensor([[float(m == meaning(c)) for m in text_meaning] for c in captions])
    width = 5 if perpendicular_negatives else 3
    rows, cols = [], []
    for i, c in enumerate(captions):
        wrong = [s for s in relation_negatives(c, perpendicular_negatives) if s in index]
        if len(wrong) == width - 1:
            rows.append(i)
            cols.append([index[c]] + [index[s] for s in wrong])
    return texts, pos, torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long).reshape(-1, width)


def relation_loss(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true caption (column 0) against its false relations (the other columns).
    logits (B, T), rows (R,), cols (R, 1 + k)."""
    if len(rows) == 0:
        return logits.new_zeros(())
    picked = logits[rows[:, None], cols]  # (R, 1 + k)
    return F.cross_entropy(picked, torch.zeros(len(rows), dtype=torch.long, device=logits.device))


def contrastive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Multi-positive symmetric InfoNCE. logits (B, T) = scale * img @ txt.T, pos (B, T) 0/1."""
    i2t = -(F.log_softmax(logits, dim=1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()
    used = pos.sum(0) > 0  # texts that are some image's caption
    col = F.log_softmax(logits[:, used], dim=0) * pos[:, used] / pos[:, used].sum(0, keepdim=True)  # (B, T')
    return (i2t - col.sum(0).mean()) / 2


def train(cfg: ClipTrainConfig, log=print):
    """Train and save; returns (model, tokenizer)."""
    from transformers import CLIPModel

    from steer.tokenizers import write_clip_tokenizer

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    pool, captions = render_pool(cfg.pool, cfg.seed)
    log(f"rendered {cfg.pool} scenes in {time.time() - t0:.0f} s")
    write_clip_tokenizer(cfg.out)
    from transformers import CLIPTokenizer
    tokenizer = CLIPTokenizer.from_pretrained(cfg.out)
    model = (CLIPModel.from_pretrained(cfg.init, dtype=torch.float32) if cfg.init else CLIPModel(clip_config())).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    t_start, budget = time.time(), max(cfg.max_minutes * 60 - (time.time() - t0), 1e-6)  # render may eat it all
    for step in range(cfg.steps):
        progress = max(step / cfg.steps, (time.time() - t_start) / budget)  # steps or wall clock, whichever ends first
        if progress >= 1.0:
            log(f"wall-clock cap reached at step {step}")
            break
        idx = rng.choice(cfg.pool, size=cfg.batch_size, replace=False)
        caps = [captions[i] for i in idx]
        texts, pos, rows, cols = batch_texts(caps, cfg.negatives, rng, cfg.canonical_positives,
                                             cfg.perpendicular_negatives)
        images = pool[torch.from_numpy(idx)].float() / 255  # (B, 3, 32, 32)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * image_embeds(model, images) @ text_embeds(model, tokenizer, texts).T  # (B, T)
        loss = contrastive_loss(logits, pos) + cfg.relation_weight * relation_loss(logits, rows, cols)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(cfg.lr, step, cfg.warmup, progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {loss.item():.3f}  scale {model.logit_scale.exp().item():.1f}  "
                f"{time.time() - t0:.0f} s")
    model.eval().requires_grad_(False)
    save(model, tokenizer, cfg.out)
    log(f"saved to {cfg.out} after {time.time() - t0:.0f} s")
    return model, tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the shapes CLIP.")
    for name, value in vars(ClipTrainConfig()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            ap.add_argument(flag, type=type(value), default=value)
    args = ap.parse_args()
    model, tokenizer = train(ClipTrainConfig(**vars(args)))
    from steer.zoo.shapes.clip_eval import evaluate
    for key, value in evaluate(model, tokenizer).items():
        print(f"{key:40s} {value:.2%}")


if __name__ == "__main__":
    main()
