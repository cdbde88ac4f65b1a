"""Amortization on the shapes world: how much of the steering teacher's gain a LoRA keeps at 1x NFE.

Rows, each evaluated with the same sampling seeds (so the comparison is paired: the same initial
noise for every row): ``base`` — the shipped pipeline at 1x NFE (``--steps`` DDIM steps, default 25,
guidance ``DEFAULT_GUIDANCE_SCALE``); ``fk`` — the steering teacher, FK with ``--teacher-particles``
particles (default 8: 8x NFE; the paper's max potential, λ = 10, η = 1) steered by ``shapes-clip``;
then one LoRA per fine-tuning method, each trained from a FRESH ``pipeline()`` on the same
``--train-captions`` train-split relational captions and evaluated at 1x NFE with the plain
deterministic sampler (best-of-N with n = 1: DDIM η = 0, one sample per seed):

- ``distill`` — ``steer.finetune.distill`` of FK samples (steer_method fk, the teacher's particles);
- ``draft`` — DRaFT-K (``draft``, variant draft, K = ``--draft-k``) on ``shapes-clip``;
- ``alignprop`` — AlignProp (``draft``, variant alignprop: randomized truncation) on ``shapes-clip``;
- ``grpo-clip`` — GRPO (DDPO on DDIM η = 1) on ``shapes-clip``;
- ``grpo-check`` — GRPO on the exact checker ``shapes-check`` (non-differentiable, verifiable: the
  Flow-GRPO / GenEval setting);
- ``dpo`` — Diffusion-DPO on online pairs (``steer.finetune.preference_data``, source ``steering``): per
  caption ``--distill-samples`` FK samples (the teacher's particles: the distillation row's sampling
  budget) each against the base model's sample, labelled by ``shapes-clip``, drawn once (off-policy);
- ``kto`` — Diffusion-KTO on verifier labels: ``--distill-samples`` FK samples per caption, desirable
  when the exact checker passes them (source ``verifier``).

DPO and KTO take their denoising errors in the same space as distillation (``--distill-loss``, x̂0 by
default: on the grey world, DPO with the papers' ε-errors moved fresh samples the wrong way in 4 of 14
runs over β and learning rate, with x̂0-errors in none of 8; tests/test_preference.py) with
β = ``--dpo-beta`` / ``--kto-beta`` = 500 (the papers' 5000 / 1000 are for ε-errors of 4×64×64 latents),
``--pref-batch`` pairs / samples per step. ``--guided 1`` fits the guided prediction (distill, DPO, KTO).

Every fine-tuning call gets ``eval_reward=ShapesSwapReward(clip_reward=...)``, so the held-out reward
of the training samples is logged beside the optimized one (second table, with the loss; mean of the
first and last 10% of the steps). The samples are the method's own: η = 1 rollouts for GRPO and
AlignProp, η = 0 for DRaFT, and for distillation the kept FK samples (constant within a round).

Evaluation sets, each with ``--seeds`` sampling seeds: (a) the training captions (amortization),
(b) the first ``--heldout`` of the 104 held-out relational captions (generalization), (c) the 12
single-object captions (regression check). Per set: exact-checker accuracy with a 95% interval
(bootstrap over captions, each caption's accuracy averaged over its seeds), mean ``shapes-clip``
(optimized), mean ``shapes-swap`` (held out; scored as ``eval_reward`` scores, on the final images
only), diversity (1 − cos of seed 0's and seed 1's CLIP image embeddings). "Share of the teacher's
gain kept" = (LoRA acc − base acc) / (teacher acc − base acc) on the training captions, with a 95%
paired bootstrap interval over captions (given only when the teacher's gain is clear of 0 in
97.5% of the resamples). Training columns: wall time (setup and saving included), seconds per
optimizer step (the trainer's per-step records, sampling included), denoiser evaluations spent in
training (the trainer's NFE counter: sampling, steering and loss forwards, per image; backward
passes not counted), and peak memory: the peak resident set size during training minus the RSS
when training started, read from ``/proc/self/statm`` by a thread every 10 ms (CPU RSS, not
tracemalloc, which does not see torch's allocator; memory an earlier row freed but the allocator
kept is reused without showing, so it is a lower bound). ``ru_maxrss`` of the process is kept in the
cell as well.

Leak check: every trained row loads its own pipeline, which must have no LoRA adapter and the same
UNet weights (sha256) as the base row's, and the reward CLIP's weights must be unchanged after every
training run; a violation stops the run. The norm of each trained LoRA's up-projections (zero at
initialization) is kept in ``training.json``, and the table marks a LoRA that stayed at zero (no step
had a gradient, e.g. every GRPO group scored alike).

Settings tuned for a 2-core CPU budget (not the papers'; ``steer.finetune.presets`` has the papers'
values for 50-step SD): LoRA rank 8 (α = 8) on the attention projections; learning rates 1e-3
(distill, DRaFT, AlignProp — AlignProp's own value) and 3e-3 (GRPO), far above DDPO's 3e-4,
because each run has tens to a few hundred optimizer steps; step counts, DRaFT's 4 prompts per step,
GRPO's 2 prompts × G = 8 per step; GRPO trains the first 60% of the chain's steps in order
(Flow-GRPO's ``timestep_selection="first"``): on this 25-step "leading" DDIM schedule the last steps
have σ ≈ 0.15, 0.04, 0.02, where the log-prob gradients (∝ 1/σ) would dominate, and the layout a
relation depends on is decided early; distillation takes 2 FK samples per caption and its loss on
x̂0 (``loss_space="x0"``, which weights the noisy steps that decide layout; RAFT's ε-loss is
``--distill-loss model``). From the papers: DRaFT K = 1 at η = 0, AlignProp's truncation
(N(0.84·S, 0.1·S)) and η = 1, DDPO's η = 1 policy, clip range 1e-4 and group advantages. GRPO's
policy is the η = 1 kernel but it is evaluated, like every row, with the deterministic sampler.

Every cell is cached under ``--cache`` (``<row>/<set>.json``, ``<row>/training.json``, the LoRA in
``<row>/run/lora``), written atomically (``steer.io.write_json``) as it finishes, so an interrupted
run resumes cell by cell: a row whose LoRA is cached is reloaded (``load_lora``) into a fresh
pipeline instead of retrained; a row interrupted during training is retrained from scratch.
``settings.json`` records the captions, seeds and chain; a run with other ones into the same cache
is refused, as is a row whose cached training config differs. ``--report-only`` prints the tables
from the cache. ``--quick`` (fewer captions, seeds and steps; cache ``amortize_cells_quick``) is
the CI-sized run.

    python benchmarks/amortize.py [--quick] [--rows base,fk,distill,...] [--seeds 4] [--cache DIR]

Budget: the default run targets <= 90 minutes on 2 cores and ``--quick`` <= 15. Measured on
2026-12-02: the first seven rows 75 min (2 threads) and ``dpo`` + ``kto`` 19 min (1 thread), on a
machine loaded by a second benchmark and tests (benchmarks/README.md); ``--quick`` is not yet
measured end to end. The teacher's evaluation dominates: it samples 8 x 592 chains (20 of the 75 min).

Uses ``measure``, ``steer_all`` and ``summarize`` (with its ``bootstrap``) of ``benchmarks/shapes.py``
(imported unchanged: the same estimator and seeding as the headline benchmark).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
_ADDED = str(HERE) not in sys.path  # imported by a test: put benchmarks/ on the path just for `shapes`
if _ADDED:
    sys.path.insert(0, str(HERE))
try:
    from shapes import measure, steer_all, summarize  # noqa: E402  (benchmarks/shapes.py)
finally:
    if _ADDED:
        sys.path.remove(str(HERE))
from steer.finetune import DistillConfig, DPOConfig, DraftConfig, GRPOConfig, KTOConfig, NFTConfig, SoarConfig  # noqa: E402
from steer.finetune import distill, dpo, draft, grpo, kto, nft, soar  # noqa: E402
from steer.finetune.lora import denoiser, load_lora, lora_state_dict  # noqa: E402
from steer.io import write_json  # noqa: E402
from steer.pipelines import from_pipe  # noqa: E402
from steer.zoo.shapes import CPU_BATCH_SIZE, DEFAULT_GUIDANCE_SCALE, DEFAULT_NUM_INFERENCE_STEPS  # noqa: E402
from steer.zoo.shapes import pipeline, world  # noqa: E402
from steer.zoo.shapes.evaluate import relational_heldout_captions  # noqa: E402
from steer.zoo.shapes.reward import ShapesCheckReward, ShapesClipReward, ShapesSwapReward  # noqa: E402

ROWS = ("base", "fk", "distill", "draft", "alignprop", "grpo-clip", "grpo-check", "dpo", "kto", "nft-clip", "soar")
TRAINED = ROWS[2:]
SETS = ("train", "heldout", "single")

# option: (default, --quick default); None = not set by --quick
DEFAULTS = {
    "train_captions": (32, 8), "heldout": (104, 16), "seeds": (4, 2),
    "distill_steps": (200, 60), "distill_samples": (2, 1),
    "draft_steps": (100, 30), "alignprop_steps": (100, 20), "grpo_steps": (40, 8),
    "dpo_steps": (100, 20), "kto_steps": (100, 20), "nft_steps": (60, 8),
}


# ---- captions and settings ---------------------------------------------------------------------
def train_captions(n: int) -> list[str]:
    """The first ``n`` train-split relational captions in a fixed pseudo-random order (by sha256 of
    the caption: version independent, and every smaller set is a prefix of a larger one)."""
    caps = sorted(world.split_captions("train")["relation"])
    caps.sort(key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    if not 1 <= n <= len(caps):
        raise SystemExit(f"--train-captions must be in 1..{len(caps)}, got {n}")
    return caps[:n]


def eval_sets(args) -> dict[str, list[str]]:
    return {"train": train_captions(args.train_captions),
            "heldout": relational_heldout_captions(args.heldout),
            "single": sorted(world.split_captions("test")["single"])[:args.singles]}


def settings(args) -> dict:
    """What every cell of a cache shares; a resume must match it."""
    return {"steps": args.steps, "guidance": args.guidance, "seeds": args.seeds,
            "teacher_particles": args.teacher_particles, "captions": eval_sets(args)}


def labels(args) -> dict[str, str]:
    K = args.teacher_particles
    return {"base": "base (1×)", "fk": f"FK-{K} teacher ({K}×)", "distill": f"distill FK-{K} → LoRA",
            "draft": f"DRaFT-{args.draft_k} → LoRA (shapes-clip)", "alignprop": "AlignProp → LoRA (shapes-clip)",
            "grpo-clip": "GRPO → LoRA (shapes-clip)", "grpo-check": "GRPO → LoRA (shapes-check)",
            "dpo": f"Diffusion-DPO, FK-{K} vs base pairs → LoRA (shapes-clip)",
            "kto": f"Diffusion-KTO, FK-{K} samples, checker labels → LoRA (shapes-check)",
            "nft-clip": "DiffusionNFT → LoRA (shapes-clip, lr 3e-4)", "soar": f"SOAR on FK-{K} samples → LoRA"}


def train_setup(row: str, args, n_captions: int):
    """(method function, config, reward name) of a trained row."""
    common = dict(lora_rank=args.rank, lora_alpha=args.alpha, seed=args.seed, keep_checkpoints=1)
    if row == "distill":
        return distill, DistillConfig(
            steer_method="fk", steer_options={"particles": args.teacher_particles},
            samples_per_prompt=args.distill_samples, max_steps=args.distill_steps, learning_rate=args.distill_lr,
            train_batch_size=args.distill_batch, prompts_per_step=min(8, n_captions), loss_space=args.distill_loss,
            guided=bool(args.guided), checkpoint_every=args.distill_steps, **common), "shapes-clip"
    if row == "draft":
        return draft, DraftConfig(variant="draft", k=args.draft_k, noise_level=0.0, max_steps=args.draft_steps,
                                  learning_rate=args.draft_lr, prompts_per_step=args.draft_prompts,
                                  checkpoint_every=args.draft_steps, **common), "shapes-clip"
    if row == "alignprop":
        return draft, DraftConfig(variant="alignprop", noise_level=args.alignprop_eta, max_steps=args.alignprop_steps,
                                  learning_rate=args.alignprop_lr, prompts_per_step=args.draft_prompts,
                                  checkpoint_every=args.alignprop_steps, **common), "shapes-clip"
    if row in ("grpo-clip", "grpo-check"):
        return grpo, GRPOConfig(group_size=args.grpo_group, prompts_per_step=args.grpo_prompts,
                                timestep_fraction=args.grpo_fraction, timestep_selection="first",
                                max_steps=args.grpo_steps, learning_rate=args.grpo_lr,
                                checkpoint_every=args.grpo_steps, **common), \
            "shapes-clip" if row == "grpo-clip" else "shapes-check"
    if row == "nft-clip":  # DiffusionNFT at its reference lr, sampling (ODE) and training the guided policy
        return nft, NFTConfig(group_size=args.grpo_group, prompts_per_step=args.grpo_prompts, max_steps=args.nft_steps,
                              learning_rate=args.nft_lr, timestep_fraction=0.5, kl_beta=0.0, guided=True,
                              checkpoint_every=args.nft_steps, **common), "shapes-clip"
    if row == "soar":  # the distill row plus SOAR's self-correction states
        _, config, reward = train_setup("distill", args, n_captions)
        fields = {k: v for k, v in config.to_dict().items() if k not in ("method", "steps_per_round")}
        return soar, SoarConfig(**fields, aux_points=2), reward
    if row in ("dpo", "kto"):
        shared = dict(steer_method="fk", steer_options={"particles": args.teacher_particles},
                      samples_per_prompt=args.distill_samples, prompts_per_step=min(8, n_captions),
                      loss_space=args.distill_loss, guided=bool(args.guided), train_batch_size=args.pref_batch, **common)
        if row == "dpo":  # online pairs: the FK sample against the base sample, labelled by shapes-clip
            return dpo, DPOConfig(source="steering", loser="base", max_steps=args.dpo_steps, learning_rate=args.dpo_lr,
                                  beta=args.dpo_beta, checkpoint_every=args.dpo_steps, **shared), "shapes-clip"
        # verifier labels: FK samples, desirable when the exact checker passes them
        return kto, KTOConfig(source="verifier", threshold=0.5, max_steps=args.kto_steps, learning_rate=args.kto_lr,
                              beta=args.kto_beta, checkpoint_every=args.kto_steps, **shared), "shapes-check"
    raise ValueError(row)


# ---- cache -----------------------------------------------------------------------------------
class Cells:
    """Cached cells: ``path/<row>/<set>.json`` (evaluations) and ``path/<row>/training.json``; atomic writes."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def file(self, row: str, name: str) -> Path:
        return self.path / row / f"{name}.json"

    def run_dir(self, row: str) -> Path:
        return self.path / row / "run"

    def get(self, row: str, name: str):
        f = self.file(row, name)
        return json.loads(f.read_text()) if f.exists() else None

    def put(self, row: str, name: str, cell: dict) -> None:
        write_json(self.file(row, name), {"row": row, "set": name, **cell})

    def check_settings(self, wanted: dict) -> None:
        f = self.path / "settings.json"
        if f.exists():
            have = json.loads(f.read_text())
            if have != json.loads(json.dumps(wanted)):
                diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != json.loads(json.dumps(wanted.get(k))))
                raise SystemExit(f"the cache {self.path} was made with other settings ({', '.join(diff)}); "
                                 f"pass another --cache or delete it")
        else:
            write_json(f, wanted)

    def settings(self):
        f = self.path / "settings.json"
        return json.loads(f.read_text()) if f.exists() else None


# ---- measurement helpers ---------------------------------------------------------------------
def fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names and float32 bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def fresh_pipeline(reference: str):
    """A newly loaded shipped pipeline, checked to carry no adapter and the base row's UNet weights."""
    pipe = pipeline()
    unet = denoiser(pipe)
    if getattr(unet, "peft_config", None):
        raise RuntimeError("a freshly loaded pipeline already carries a LoRA adapter: training leaked")
    if fingerprint(unet) != reference:
        raise RuntimeError("a freshly loaded pipeline's UNet differs from the base row's: training leaked")
    return pipe


def make_process(pipe, args):
    return from_pipe(pipe, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     batch_size=args.batch_size or None)


class PeakRSS:
    """Peak resident set size above its value at entry, sampled from /proc/self/statm every ``interval`` s."""

    PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self, interval: float = 0.01):
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.PAGE
        except OSError:  # not Linux: no sampling, only ru_maxrss
            return 0

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def report(self) -> dict:
        return {"peak_rss_growth_mib": (self.peak - self.start) / 2 ** 20, "rss_at_start_mib": self.start / 2 ** 20,
                "ru_maxrss_mib": self.maxrss1 / 1024, "ru_maxrss_growth_mib": (self.maxrss1 - self.maxrss0) / 1024}


def lora_b_norm(pipe) -> float:
    """Norm of the LoRA up-projections (zero at initialization)."""
    return float(torch.linalg.vector_norm(torch.stack(
        [v.float().norm() for k, v in lora_state_dict(pipe).items() if "lora_B" in k])))


def plain(obj):
    return json.loads(json.dumps(obj))


def same_config(cached: dict, config) -> bool:
    """The cached training config equals ``config``; a field the cache predates must hold its default."""
    import dataclasses

    now = plain(config.to_dict())
    defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    newer = {k for k in now if k not in cached}
    return ({k: now[k] for k in now if k in cached} == cached
            and all(k in defaults and now[k] == plain(defaults[k]) for k in newer))


def check_trained(row, args, captions, cells: Cells) -> None:
    """A cached trained row must have been trained with the config this run would use."""
    cached = cells.get(row, "training")
    _, config, _ = train_setup(row, args, len(captions))
    if cached is not None and (not same_config(cached["config"], config) or cached["captions"] != captions):
        raise SystemExit(f"row {row!r} in {cells.path} was trained with other settings; delete "
                         f"{cells.path / row} (or pass another --cache) to retrain it")


# ---- rows ----------------------------------------------------------------------------------
def evaluate(process, reward, row, method, options, sets, args, cells: Cells, label: str) -> None:
    """The row's missing evaluation cells: every set, ``args.seeds`` seeds (chunk s of seed k seeded k·10^6 + s)."""
    for name, caps in sets.items():
        if not caps or cells.get(row, name):
            continue
        samples, nfe_total, seconds = [], 0.0, 0.0
        for seed in range(args.seeds):
            results, nfe, sec = steer_all(process, reward, caps, method, options, seed, args.chunk)
            samples.append(measure(reward, torch.cat([r.images.float() for r in results]), caps))
            nfe_total, seconds = nfe_total + nfe / args.seeds, seconds + sec
        cell = summarize(samples, nfe_total, seconds)
        cell["per_caption"] = torch.stack([s["correct"] for s in samples], 1).mean(1).tolist()
        cells.put(row, name, {"label": label, "method": method, "options": options, **cell})


def train_row(row, args, captions, reward, reference, cells: Cells):
    """Train (or reload) the row's LoRA on a fresh pipeline; returns its process."""
    fn, config, reward_name = train_setup(row, args, len(captions))
    cached = cells.get(row, "training")
    lora_dir = cells.run_dir(row) / "lora"
    pipe = fresh_pipeline(reference)
    process = make_process(pipe, args)
    if cached is not None and lora_dir.is_dir():
        check_trained(row, args, captions, cells)
        from diffusers.utils import logging as dlog

        level = dlog.get_verbosity()
        dlog.set_verbosity_error()  # "no LoRA keys for the text encoder": true, and expected
        try:
            load_lora(pipe, lora_dir)
        finally:
            dlog.set_verbosity(level)
        return process
    train_reward = reward if reward_name == "shapes-clip" else ShapesCheckReward()
    clip_before = fingerprint(reward.model)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        result = fn(process, train_reward, captions, config, out_dir=cells.run_dir(row), overwrite=True,
                    eval_reward=ShapesSwapReward(clip_reward=reward))
    wall = time.perf_counter() - t0
    if fingerprint(reward.model) != clip_before:
        raise RuntimeError(f"training {row} changed the reward CLIP's weights")
    norm = lora_b_norm(pipe)  # 0 when no step had a gradient (e.g. GRPO groups all scoring alike)
    shutil.rmtree(cells.run_dir(row) / "checkpoints", ignore_errors=True)  # the run is complete; keep lora/
    m = result.metrics
    tenth = max(1, len(m) // 10)

    def mean_of(key, part):
        vals = [r[key] for r in part if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    cells.put(row, "training", {
        "label": labels(args)[row], "method": fn.__name__, "reward": reward_name, "captions": captions,
        "config": config.to_dict(), "steps": len(m), "wall_seconds": wall,
        "loop_seconds": result.seconds, "seconds_per_step": sum(r["seconds"] for r in m) / len(m),
        "nfe": m[-1]["nfe"], "reward_calls": m[-1]["reward_calls"], **mem.report(), "lora_b_norm": norm,
        "reward_first": mean_of("reward_mean", m[:tenth]), "reward_last": mean_of("reward_mean", m[-tenth:]),
        "swap_first": mean_of("eval_reward_mean", m[:tenth]), "swap_last": mean_of("eval_reward_mean", m[-tenth:]),
        "loss_first": mean_of("loss", m[:tenth]), "loss_last": mean_of("loss", m[-tenth:]),
        "threads": torch.get_num_threads()})
    return process


# ---- report --------------------------------------------------------------------------------
def share(base: list, teacher: list, lora: list, reps: int = 2000):
    """(point, interval or None) of (lora − base) / (teacher − base) over captions, paired bootstrap."""
    b, t, lo = (torch.tensor(v, dtype=torch.float64) for v in (base, teacher, lora))
    gain = float(t.mean() - b.mean())
    point = float(lo.mean() - b.mean()) / gain if gain > 0 else None
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(b), (reps, len(b)), generator=g)
    gains, kept = t[idx].mean(1) - b[idx].mean(1), lo[idx].mean(1) - b[idx].mean(1)
    ok = gains > 0
    if point is None or float(ok.double().mean()) < 0.975:
        return point, None
    r = kept[ok] / gains[ok]
    return point, (float(r.quantile(0.025)), float(r.quantile(0.975)))


def pct(c) -> str:
    return "—" if c is None else f"{c['accuracy']:.1%} [{c['ci'][0]:.1%}, {c['ci'][1]:.1%}]"


def pair(a, b, key, fmt) -> str:
    return " / ".join("—" if c is None else format(c[key], fmt) for c in (a, b))


def tables(cells: Cells, rows: list[str]) -> str:
    got = {r: {s: cells.get(r, s) for s in SETS + ("training",)} for r in rows}
    got = {r: v for r, v in got.items() if any(v.values())}
    base, teacher = got.get("base", {}).get("train"), got.get("fk", {}).get("train")
    head = ("| row | NFE / sample | train captions: acc [95% CI] | share of teacher's gain kept [95% CI] | "
            "held-out: acc [95% CI] | single-object acc | shapes-clip train / held-out | "
            "shapes-swap train / held-out | diversity train / held-out |")
    lines = [head, "|---" * 9 + "|"]
    for r, c in got.items():
        tr, ho, si = c["train"], c["heldout"], c["single"]
        label = next((x["label"] for x in c.values() if x), r)
        nfe = next((x["nfe"] for x in (tr, ho, si) if x), None)
        kept = "—"
        if r not in ("base", "fk") and tr and base and teacher:
            point, ci = share(base["per_caption"], teacher["per_caption"], tr["per_caption"])
            kept = "— (teacher gain ≤ 0)" if point is None else f"{point:.0%}" + (
                f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else " (teacher gain not clear of 0)")
        lines.append(f"| {label} | {'—' if nfe is None else f'{nfe:.0f}'} | {pct(tr)} | {kept} | {pct(ho)} | "
                     f"{'—' if si is None else format(si['accuracy'], '.1%')} | {pair(tr, ho, 'reward', '.2f')} | "
                     f"{pair(tr, ho, 'swap_p', '.3f')} | {pair(tr, ho, 'diversity', '.3f')} |")
    lines += ["", "| row | reward | steps | train wall (s) | s / step | training NFE | peak RSS growth (MiB) | "
                  "ru_maxrss (MiB) | loss first → last 10% | optimized reward first → last 10% | "
                  "shapes-swap first → last 10% |",
              "|---" * 11 + "|"]
    for r, c in got.items():
        t = c["training"]
        if t is None:
            continue

        def arrow(a, b, fmt):
            return "—" if a is None or b is None else f"{format(a, fmt)} → {format(b, fmt)}"

        zero = " (LoRA stayed 0)" if not t["lora_b_norm"] > 0 else ""
        lines.append(f"| {t['label']}{zero} | {t['reward']} | {t['steps']} | {t['wall_seconds']:.0f} | "
                     f"{t['seconds_per_step']:.2f} | {t['nfe']:,} | {t['peak_rss_growth_mib']:.0f} | "
                     f"{t['ru_maxrss_mib']:.0f} | {arrow(t.get('loss_first'), t.get('loss_last'), '.4g')} | "
                     f"{arrow(t['reward_first'], t['reward_last'], '.3f')} | "
                     f"{arrow(t['swap_first'], t['swap_last'], '.3f')} |")
    return "\n".join(lines)


def describe(s: dict | None) -> str:
    if not s:
        return "(no settings cached)"
    caps = s["captions"]
    return (f"{len(caps['train'])} training captions, {len(caps['heldout'])} held-out relational, "
            f"{len(caps['single'])} single-object; {s['seeds']} sampling seeds; {s['steps']} DDIM steps, "
            f"guidance {s['guidance']}; teacher FK with {s['teacher_particles']} particles")


# ---- main ----------------------------------------------------------------------------------
def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the CI-sized run (fewer captions, seeds, steps)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    ap.add_argument("--cache", default=None, help="cell cache (default benchmarks/amortize_cells[_quick])")
    ap.add_argument("--report-only", action="store_true", help="print the tables from the cache")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=CPU_BATCH_SIZE, help="latents per denoiser call")
    ap.add_argument("--chunk", type=int, default=52, help="captions per sampling call in evaluation")
    g = ap.add_argument_group("evaluation")
    g.add_argument("--train-captions", type=int, help="train-split relational captions trained on (32; quick 8)")
    g.add_argument("--heldout", type=int, help="held-out relational captions evaluated (104; quick 16)")
    g.add_argument("--singles", type=int, default=12, help="single-object captions evaluated (all 12)")
    g.add_argument("--seeds", type=int, help="sampling seeds per caption (4; quick 2)")
    g.add_argument("--steps", type=int, default=DEFAULT_NUM_INFERENCE_STEPS, help="DDIM steps S (1x NFE = S)")
    g.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE)
    g.add_argument("--teacher-particles", type=int, default=8, help="FK particles of the teacher (and distill)")
    g = ap.add_argument_group("training (CPU-budget values, see the docstring)")
    g.add_argument("--seed", type=int, default=0, help="training seed")
    g.add_argument("--rank", type=int, default=8, help="LoRA rank")
    g.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    g.add_argument("--distill-steps", type=int, help="(200; quick 60)")
    g.add_argument("--distill-lr", type=float, default=1e-3)
    g.add_argument("--distill-samples", type=int, help="FK samples per caption (2; quick 1)")
    g.add_argument("--distill-batch", type=int, default=8)
    g.add_argument("--distill-loss", choices=("x0", "model"), default="x0")
    g.add_argument("--draft-steps", type=int, help="(100; quick 30)")
    g.add_argument("--draft-lr", type=float, default=1e-3)
    g.add_argument("--draft-k", type=int, default=1)
    g.add_argument("--draft-prompts", type=int, default=4, help="prompts per step (DRaFT and AlignProp)")
    g.add_argument("--alignprop-steps", type=int, help="(100; quick 20)")
    g.add_argument("--alignprop-lr", type=float, default=1e-3)
    g.add_argument("--alignprop-eta", type=float, default=1.0)
    g.add_argument("--grpo-steps", type=int, help="(40; quick 8)")
    g.add_argument("--grpo-lr", type=float, default=3e-3)
    g.add_argument("--grpo-group", type=int, default=8)
    g.add_argument("--grpo-prompts", type=int, default=2)
    g.add_argument("--grpo-fraction", type=float, default=0.6, help="first fraction of the chain's steps trained")
    g.add_argument("--guided", type=int, choices=(0, 1), default=0,
                   help="distill / dpo / kto fit the guided prediction (1) or the conditional branch (0)")
    g.add_argument("--pref-batch", type=int, default=4, help="dpo: pairs, kto: samples per step")
    g.add_argument("--nft-steps", type=int, help="(60; quick 8)")
    g.add_argument("--nft-lr", type=float, default=3e-4, help="DiffusionNFT's own learning rate")
    g.add_argument("--dpo-steps", type=int, help="(100; quick 20)")
    g.add_argument("--dpo-lr", type=float, default=1e-3)
    g.add_argument("--dpo-beta", type=float, default=500.0, help="β (x0-space errors; the paper's 5000 is for ε)")
    g.add_argument("--kto-steps", type=int, help="(100; quick 20)")
    g.add_argument("--kto-lr", type=float, default=1e-3)
    g.add_argument("--kto-beta", type=float, default=500.0)
    args = ap.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.cache is None:
        args.cache = str(HERE / ("amortize_cells_quick" if args.quick else "amortize_cells"))
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}; choose from {','.join(ROWS)}")
    args.rows = [r for r in ROWS if r in rows]
    if args.draft_k > args.steps:
        ap.error(f"--draft-k {args.draft_k} exceeds --steps {args.steps}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    cells = Cells(Path(args.cache))
    computed = []
    if not args.report_only:
        cells.check_settings(settings(args))
        sets = eval_sets(args)
        reward = ShapesClipReward()
        ref_pipe = pipeline()
        reference = fingerprint(denoiser(ref_pipe))
        name = labels(args)
        for row in args.rows:
            if row in TRAINED:
                check_trained(row, args, sets["train"], cells)
            if all(cells.get(row, s) for s in sets if sets[s]) and (row not in TRAINED or cells.get(row, "training")):
                print(f"{row}: cached", flush=True)
                continue
            if row == "base":
                evaluate(make_process(ref_pipe, args), reward, row, "best_of_n", {"n": 1}, sets, args, cells,
                         name[row])
            elif row == "fk":
                evaluate(make_process(ref_pipe, args), reward, row, "fk", {"particles": args.teacher_particles},
                         sets, args, cells, name[row])
            else:
                process = train_row(row, args, sets["train"], reward, reference, cells)
                evaluate(process, reward, row, "best_of_n", {"n": 1}, sets, args, cells, name[row])
                del process
            computed.append(row)
            print(f"{row} done [{time.time() - t0:.0f}s]", flush=True)
    print(f"amortization on the shapes world: {describe(cells.settings())}\n")
    report = tables(cells, list(ROWS))
    print(report)
    seconds = time.time() - t0
    print(f"\nthis run: {seconds:.0f}s ({len(computed)} rows computed: {', '.join(computed) or 'none'}; "
          f"{torch.get_num_threads()} threads); cache: {args.cache}")
    return {"rows": {r: {s: cells.get(r, s) for s in SETS + ("training",)} for r in ROWS}, "computed": computed,
            "seconds": seconds, "report": report}


if __name__ == "__main__":
    main()
