"""Preference data for Diffusion-DPO and Diffusion-KTO: three sources behind one call.

``preference_batch(trainer, generator, step, paired=...)`` returns a ``PreferenceBatch`` — for DPO
(``paired``) ``x0`` holds B winners then their B losers, for KTO B samples with ``desirable`` labels —
whatever ``config.source`` is:

- ``steering`` (online pairs, the default): for every prompt and repetition, a sample from
  ``steer_method`` (e.g. FK) against the current model's plain sample (``loser="base"``: best-of-N
  with n = 1, the process' deterministic sampler) or against the lowest-reward one of
  ``samples_per_prompt`` steered samples (``loser="worst"``). The reward labels the pair (the
  higher reward wins); a pair with equal rewards is dropped (it prefers nothing). KTO reads a pair as
  a desirable winner and an undesirable loser, as Diffusion-KTO reads Pick-a-Pic.
- ``verifier``: ``samples_per_prompt`` samples of every prompt from ``steer_method`` (``best_of_n``
  with n = 1 for the model's own), desirable when ``reward > threshold`` — a verifier's pass / fail
  (e.g. the exact checker ``shapes-check``) fits KTO directly. DPO pairs each prompt's passes with its
  fails (as many pairs as the smaller side has).
- ``dataset``: a preference dataset on disk in the Pick-a-Pic layout (``preference_dataset``): read
  as a local stream (pyarrow / JSON lines, a seeded shuffle buffer, no network), images decoded only
  for the rows of a micro-batch and encoded to latents with the pipeline's VAE (``Process.encode``).

The online data (``steering``, ``verifier``) are drawn before the first step and, with
``regenerate_every = N > 0``, again from the current LoRA every N optimizer steps (on-policy); with 0
once (off-policy). They live in ``trainer.extra`` (so a resume continues with the same data, bitwise);
the dataset stream's position is kept there too, and the dataset's fingerprint among the run's settings.
"""
from __future__ import annotations

import torch

from steer.finetune.config import DPOConfig, MaPOConfig
from steer.finetune.preference_common import SALT, PreferenceBatch, stream_seed  # noqa: F401  (re-exported)
from steer.finetune.trainer import Trainer


def preference_batch(trainer: Trainer, generator: torch.Generator, step: int, *, paired: bool) -> PreferenceBatch:
    """The micro-batch of step ``step`` from ``trainer.config.source``."""
    if trainer.config.source == "dataset":
        from steer.finetune.preference_dataset import dataset_batch

        return dataset_batch(trainer, generator, paired=paired)
    data = online_data(trainer, step)
    return pairs_batch(trainer, data, generator) if paired else labelled_batch(trainer, data, generator)


# ---- online data ---------------------------------------------------------------------------
def online_data(trainer: Trainer, step: int) -> dict:
    """The current round's data (drawn when a round starts; checkpointed in ``trainer.extra``)."""
    every = trainer.config.regenerate_every
    round_index = step // every if every else 0
    data = trainer.extra.get("preference_data")
    if data is None or data["round"] != round_index:
        draw_fn = steering_data if trainer.config.source == "steering" else verifier_data
        data = trainer.extra["preference_data"] = {"round": round_index, **draw_fn(trainer, round_index)}
        check_data(trainer, data)
    return data


def _methods(trainer: Trainer):
    from steer.catalog import resolve_method

    return resolve_method(trainer.config.steer_method), resolve_method("best_of_n")


def steering_data(trainer: Trainer, round_index: int) -> dict:
    """Pairs of a steered sample and a base (or the worst steered) sample of the same prompt."""
    from steer.finetune.distill import draw

    config = trainer.config
    steer_fn, base_fn = _methods(trainer)
    salt = SALT + round_index * 10_000
    steered = draw(trainer, steer_fn, dict(config.steer_options), config.samples_per_prompt, salt)
    n = len(steered["idx"])
    if config.loser == "base":
        base = draw(trainer, base_fn, {"n": 1}, config.samples_per_prompt, salt + 5_000)
        pool = _concat(steered, base)
        candidates = [(j, n + j) for j in range(n)]  # steered sample j against base sample j (same prompt)
    else:
        pool = steered
        candidates = [_best_and_worst(steered, p) for p in sorted(set(steered["idx"]))]
    pairs = []
    for a, b in candidates:
        ra, rb = float(pool["rewards"][a]), float(pool["rewards"][b])
        if ra != rb:  # equal rewards prefer nothing
            pairs.append((a, b) if ra > rb else (b, a))
    desirable = torch.zeros(len(pool["idx"]), dtype=torch.bool)
    for w, _ in pairs:
        desirable[w] = True
    used = sorted({r for pair in pairs for r in pair})
    return {**pool, "pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), "desirable": desirable,
            "usable": torch.tensor(used, dtype=torch.long), "candidates": len(candidates)}


def _best_and_worst(drawn: dict, prompt: int) -> tuple[int, int]:
    rows = [j for j, p in enumerate(drawn["idx"]) if p == prompt]
    r = drawn["rewards"][rows]
    return rows[int(r.argmax())], rows[int(r.argmin())]


def _concat(a: dict, b: dict) -> dict:
    out = {"latents": torch.cat([a["latents"], b["latents"]]), "idx": a["idx"] + b["idx"],
           "rewards": torch.cat([a["rewards"], b["rewards"]])}
    if "eval_rewards" in a:
        out["eval_rewards"] = torch.cat([a["eval_rewards"], b["eval_rewards"]])
    return out


def verifier_data(trainer: Trainer, round_index: int) -> dict:
    """Samples labelled desirable when ``reward > threshold``; DPO pairs a prompt's passes with its fails."""
    from steer.finetune.distill import draw

    config = trainer.config
    steer_fn, _ = _methods(trainer)
    drawn = draw(trainer, steer_fn, dict(config.steer_options), config.samples_per_prompt,
                 SALT + round_index * 10_000)
    desirable = drawn["rewards"] > config.threshold
    pairs = []
    for p in sorted(set(drawn["idx"])):
        rows = [j for j, q in enumerate(drawn["idx"]) if q == p]
        passes, fails = [j for j in rows if desirable[j]], [j for j in rows if not desirable[j]]
        pairs += list(zip(passes, fails))
    return {**drawn, "pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), "desirable": desirable,
            "usable": torch.arange(len(drawn["idx"])), "candidates": len(set(drawn["idx"]))}


def check_data(trainer: Trainer, data: dict) -> None:
    """A round that gives the method nothing to learn from is a one-line error naming the fix."""
    config = trainer.config
    if trainer.method in (DPOConfig.method, MaPOConfig.method) and len(data["pairs"]) == 0:
        what = ("every pair's two samples got the same reward" if config.source == "steering" else
                f"no prompt had both a sample with reward > {config.threshold} and one without")
        raise ValueError(f"no preference pairs in round {data['round']}: {what}; raise samples_per_prompt, "
                         f"use a reward with finer values, or use --method kto (unpaired labels)")
    if len(data["usable"]) == 0:
        raise ValueError(f"no labelled samples in round {data['round']}: every pair's two samples got the same "
                         f"reward; raise samples_per_prompt or use a reward with finer values")


def pairs_batch(trainer: Trainer, data: dict, generator: torch.Generator) -> PreferenceBatch:
    """B pairs drawn uniformly with replacement: x0 = [winners; losers]."""
    pairs = data["pairs"]
    rows = torch.randint(len(pairs), (min(trainer.config.train_batch_size, len(pairs)),), generator=generator)
    w, l = pairs[rows, 0], pairs[rows, 1]
    idx = [data["idx"][j] for j in w.tolist()]
    x0 = torch.cat([data["latents"][w], data["latents"][l]]).to(trainer.process.device)
    return PreferenceBatch(x0=x0, cond=trainer.cond(idx), prompts=[trainer.prompts[j] for j in idx],
                           rewards=data["rewards"], eval_rewards=data.get("eval_rewards"))


def labelled_batch(trainer: Trainer, data: dict, generator: torch.Generator) -> PreferenceBatch:
    """B labelled samples: uniformly over the usable ones, or desirable with probability
    ``desirable_fraction`` (Diffusion-KTO's weighted sampler) when set and both kinds exist."""
    usable, desirable = data["usable"], data["desirable"]
    B = min(trainer.config.train_batch_size, len(usable))
    fraction = getattr(trainer.config, "desirable_fraction", None)
    good, bad = usable[desirable[usable]], usable[~desirable[usable]]
    if fraction is None or len(good) == 0 or len(bad) == 0:
        rows = usable[torch.randint(len(usable), (B,), generator=generator)]
    else:
        pick_good = torch.rand(B, generator=generator) < fraction
        g = good[torch.randint(len(good), (B,), generator=generator)]
        b = bad[torch.randint(len(bad), (B,), generator=generator)]
        rows = torch.where(pick_good, g, b)
    idx = [data["idx"][j] for j in rows.tolist()]
    return PreferenceBatch(x0=data["latents"][rows].to(trainer.process.device), cond=trainer.cond(idx),
                           prompts=[trainer.prompts[j] for j in idx], desirable=desirable[rows],
                           rewards=data["rewards"], eval_rewards=data.get("eval_rewards"))
