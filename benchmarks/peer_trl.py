"""Side by side with a peer (issue 28 item 4): trl 0.23.1's ``DDPOTrainer`` / ``AlignPropTrainer`` against
``--preset ddpo`` / ``--preset alignprop`` on the style task of ``benchmarks/amortize_style.py``.

The task: the shapes world pipeline, the reward ``chroma``, the 16 training captions of
``train_captions(16)``; evaluation at 1x exactly as ``amortize_style.py`` does it (its ``evaluate``: the same
seeds, captions, 16 held-out captions, deterministic 25-step DDIM, guidance 4), paired with the ``base`` and
``fk`` cells copied from ``benchmarks/amortize_style_cells``. Matched settings for all four trained rows:
25 sampling steps, guidance 4, η = 1, LoRA r = 4 α = 4 (gaussian init) on to_q/to_k/to_v/to_out.0,
8 samples per optimizer update, ``--updates`` updates, lr 3e-4 (DDPO) / 1e-3 (AlignProp), clip range 1e-4,
advantage clip 5, every timestep trained; advantages as each side's default (trl: ``per_prompt_stat_tracking
= False``, i.e. batch-normalized rewards; steer's preset: the per-prompt tracker, buffer 16 / min count 16).

Rows: ``steer-ddpo`` (``steer.finetune.grpo`` with ``presets.config("ddpo")``), ``trl-ddpo``
(``DDPOTrainer``: sample_batch_size = train_batch_size = 8, one sampling batch per epoch),
``steer-alignprop`` (``steer.finetune.draft`` with ``presets.config("alignprop")``), ``trl-alignprop``
(``AlignPropTrainer``: train_batch_size 8, its per-step randomized truncation with the default
``truncated_rand_backprop_minmax`` scaled to the 25-step chain, (0, 25)); diagnostic rows
``steer-ddpo-batchadv`` (steer's DDPO with batch-normalized advantages, trl's default) and
``trl-ddpo-pp`` (trl with its per-prompt tracker on, steer's preset), ``trl-ddpo-b1`` (trl's default
``train_batch_size = 1``: the same 8 samples per epoch, but 8 optimizer steps of one sample each — not
matched; in its row "updates" counts epochs).

trl is never a project dependency: install it into a scratch folder (``pip install --no-deps --target
/tmp/trl023 trl==0.23.1``) and pass ``--trl /tmp/trl023``. A trl LoRA is saved with trl's own
``save_pretrained`` and loaded into a fresh ``pipeline()`` with ``load_lora_weights``; the loaded UNet is
checked to reproduce the trained UNet's output before it is evaluated.

Cells are cached under ``--cache`` (default ``benchmarks/peer_trl_cells``) as they finish; a cached LoRA is
reloaded. One torch thread (``--threads``). ``--smoke N`` trains the rows N updates into a scratch folder and
prints s/update only; ``--profile ROW`` profiles one update of a row (torch profiler, top ops).

    python benchmarks/peer_trl.py --trl /tmp/trl023 [--rows ...] [--updates 50] [--report-only]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark_peer", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


style = _load("amortize_style")

from steer.finetune import draft, grpo, presets  # noqa: E402
from steer.finetune.lora import denoiser, load_lora  # noqa: E402
from steer.pipelines import from_pipe  # noqa: E402
from steer.rewards.chroma import ChromaReward  # noqa: E402
from steer.zoo.shapes import pipeline  # noqa: E402
from steer.zoo.shapes.generator import WEIGHTS_DIR  # noqa: E402

ROWS = ("base", "fk", "steer-ddpo", "trl-ddpo", "steer-alignprop", "trl-alignprop")
EXTRA = ("steer-ddpo-batchadv", "trl-ddpo-pp", "trl-ddpo-b1")
STEPS, GUIDANCE, BATCH = 25, 4.0, 8


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--updates", type=int, default=50, help="optimizer updates of every trained row")
    p.add_argument("--ddpo-lr", type=float, default=3e-4)
    p.add_argument("--alignprop-lr", type=float, default=1e-3)
    p.add_argument("--trl", default="/tmp/trl023", help="folder trl 0.23.1 is installed in (--target)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=HERE / "peer_trl_cells")
    p.add_argument("--source", type=Path, default=HERE / "amortize_style_cells",
                   help="where the base and fk cells are copied from")
    p.add_argument("--smoke", type=int, default=0, help="train each row this many updates, print s/update, no cache")
    p.add_argument("--profile", default=None, help="profile one update of this row")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def style_args(args):
    return style.parse(["--cache", str(args.cache), "--steps", str(STEPS), "--threads", str(args.threads)])


# ---- steer rows -------------------------------------------------------------------------------------
def steer_config(row, args, updates):
    common = dict(max_steps=updates, prompts_per_step=BATCH, seed=0, checkpoint_every=updates, keep_checkpoints=1)
    if row.startswith("steer-ddpo"):
        extra = {"stat_min_count": 10 ** 9} if row == "steer-ddpo-batchadv" else {}  # never the buffer: batch stats
        return grpo, presets.config("ddpo", learning_rate=args.ddpo_lr, group_size=1, **common, **extra)
    return draft, presets.config("alignprop", learning_rate=args.alignprop_lr, **common)


def train_steer(row, args, updates, run_dir, reference):
    fn, config = steer_config(row, args, updates)
    pipe = style.fresh_pipeline(reference)
    process = from_pipe(pipe, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    captions = style.train_captions(16)
    t0 = time.perf_counter()
    result = fn(process, ChromaReward(), captions, config, out_dir=run_dir, overwrite=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    m = result.metrics
    return pipe, {"config": config.to_dict(), "wall_seconds": wall, "update_seconds": [r["seconds"] for r in m],
                  "curve": [[BATCH * (k + 1), r["reward_mean"]] for k, r in enumerate(m)]}


# ---- trl rows ---------------------------------------------------------------------------------------
def trl_modules(args):
    if args.trl not in sys.path:
        sys.path.insert(0, args.trl)
    from accelerate import PartialState

    PartialState()  # trl's pipeline logs through accelerate's logger, which needs a state
    import trl  # noqa: F401
    from trl.models.modeling_sd_base import DefaultDDPOStableDiffusionPipeline
    from trl.trainer.alignprop_config import AlignPropConfig
    from trl.trainer.alignprop_trainer import AlignPropTrainer
    from trl.trainer.ddpo_config import DDPOConfig
    from trl.trainer.ddpo_trainer import DDPOTrainer

    if trl.__version__ != "0.23.1":
        raise SystemExit(f"trl {trl.__version__} found at {args.trl}; this benchmark is for 0.23.1")
    return DefaultDDPOStableDiffusionPipeline, DDPOConfig, DDPOTrainer, AlignPropConfig, AlignPropTrainer


def trl_trainer(row, args, updates, scratch: Path):
    """(trainer, its pipeline, the per-update reward log) of a trl row."""
    Pipe, DDPOConfig, DDPOTrainer, AlignPropConfig, AlignPropTrainer = trl_modules(args)
    captions = style.train_captions(16)
    rng = random.Random(0)
    log: list[list[float]] = []
    chroma = ChromaReward()

    def prompt_fn():
        return rng.choice(captions), {}

    def reward_fn(images, prompts, metadata):
        r = chroma(images.float(), list(prompts))  # (B,); carries gradients for AlignProp
        log.append(r.detach().float().tolist())
        return r, {}

    common = dict(num_epochs=updates, sample_num_steps=STEPS, sample_eta=1.0, sample_guidance_scale=GUIDANCE,
                  train_batch_size=BATCH, train_gradient_accumulation_steps=1, mixed_precision="no", seed=0,
                  log_with=None, save_freq=10 ** 9, logdir=str(scratch / "logs"),
                  project_kwargs={"project_dir": str(scratch / "project")})
    torch.manual_seed(0)
    sd = Pipe(str(WEIGHTS_DIR))
    sd.set_progress_bar_config(disable=True)
    if row.startswith("trl-ddpo"):
        if row == "trl-ddpo-b1":  # trl's default train_batch_size = 1: one optimizer step per sample
            common["train_batch_size"] = 1
        config = DDPOConfig(**common, sample_batch_size=BATCH, sample_num_batches_per_epoch=1,
                            train_learning_rate=args.ddpo_lr, train_clip_range=1e-4, train_adv_clip_max=5.0,
                            train_timestep_fraction=1.0, train_num_inner_epochs=1,
                            per_prompt_stat_tracking=row == "trl-ddpo-pp")
        trainer = DDPOTrainer(config, reward_fn, prompt_fn, sd)
    else:
        config = AlignPropConfig(**common, train_learning_rate=args.alignprop_lr, truncated_backprop_rand=True,
                                 truncated_rand_backprop_minmax=(0, STEPS))
        trainer = AlignPropTrainer(config, reward_fn, prompt_fn, sd)
    return trainer, sd, log, config


def train_trl(row, args, updates, lora_dir: Path):
    scratch = Path(tempfile.mkdtemp(prefix="peer_trl_"))
    try:
        trainer, sd, log, config = trl_trainer(row, args, updates, scratch)
        seconds, global_step = [], 0
        t0 = time.perf_counter()
        for epoch in range(updates):
            t = time.perf_counter()
            global_step = trainer.step(epoch, global_step)
            seconds.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        save = scratch / "saved"
        sd.save_pretrained(str(save))  # trl's own save: the LoRA (diffusers keys) + the whole pipeline
        lora_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(save / "pytorch_lora_weights.safetensors", lora_dir / "pytorch_lora_weights.safetensors")
        curve = [[BATCH * (k + 1), sum(r) / len(r)] for k, r in enumerate(log)]
        cfg = {k: v for k, v in config.to_dict().items() if not isinstance(v, dict)}
        return sd, {"config": cfg, "wall_seconds": wall, "update_seconds": seconds, "curve": curve}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_trl_lora(pipe, lora_dir: Path) -> None:
    pipe.load_lora_weights(str(lora_dir), weight_name="pytorch_lora_weights.safetensors")


@torch.no_grad()
def check_reload(trained_unet, pipe) -> float:
    """Max |Δ| between the trained UNet's output and the reloaded one's on a fixed input (must be ~0)."""
    unet = denoiser(pipe)
    g = torch.Generator().manual_seed(0)
    c = unet.config
    x = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    emb = torch.randn(2, 77, c.cross_attention_dim, generator=g)
    t = torch.tensor([500, 20])
    a = trained_unet.eval()(x, t, emb).sample
    b = unet.eval()(x, t, emb).sample
    moved = (trained_unet(x, t, emb).sample - unet(x, t, emb).sample).abs().max()
    return float(max((a - b).abs().max(), moved))


# ---- rows -------------------------------------------------------------------------------------------
def train_row(row, args, cells, reference):
    """The row's evaluation process: trained now (training.json cached) or reloaded from its cached LoRA."""
    lora_dir = cells.run_dir(row) / "lora"
    pipe = style.fresh_pipeline(reference)
    if cells.get(row, "training") is not None and lora_dir.is_dir():
        (load_trl_lora if row.startswith("trl") else load_lora)(pipe, lora_dir)
        return style.process_of(pipe, STEPS)
    if row.startswith("steer"):
        trained, info = train_steer(row, args, args.updates, cells.run_dir(row), reference)
        pipe = trained
    else:
        sd, info = train_trl(row, args, args.updates, lora_dir)
        load_trl_lora(pipe, lora_dir)
        info["reload_max_abs_diff"] = check_reload(sd.unet, pipe)
        if info["reload_max_abs_diff"] > 1e-4:
            raise RuntimeError(f"{row}: the reloaded LoRA does not reproduce trl's UNet "
                               f"(max |Δ| {info['reload_max_abs_diff']:.2e})")
    secs = info["update_seconds"]
    cells.put(row, "training", {**info, "updates": len(secs), "samples": BATCH * len(secs),
                                "seconds_per_update": sum(secs) / len(secs),
                                "seconds_per_sample": sum(secs) / len(secs) / BATCH,
                                "threads": torch.get_num_threads()})
    return style.process_of(pipe, STEPS)


def smoke(args, rows, reference):
    for row in rows:
        if row in ("base", "fk"):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if row.startswith("steer"):
                _, info = train_steer(row, args, args.smoke, Path(tmp) / "run", reference)
            else:
                sd, info = train_trl(row, args, args.smoke, Path(tmp) / "lora")
                pipe = style.fresh_pipeline(reference)
                load_trl_lora(pipe, Path(tmp) / "lora")
                info["reload_max_abs_diff"] = check_reload(sd.unet, pipe)
        print(f"{row}: s/update {[round(s, 1) for s in info['update_seconds']]} "
              f"rewards {[round(r, 4) for _, r in info['curve']]} reload {info.get('reload_max_abs_diff')}",
              flush=True)


def profile(args, row, reference):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with tempfile.TemporaryDirectory() as tmp:
        if row.startswith("steer"):
            fn, config = steer_config(row, args, 1)
            pipe = style.fresh_pipeline(reference)
            process = from_pipe(pipe, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                fn(process, ChromaReward(), style.train_captions(16), config, out_dir=Path(tmp) / "run", overwrite=True)
        else:
            trainer, _, _, _ = trl_trainer(row, args, 1, Path(tmp))
            trainer.step(0, 0)  # warm-up outside the profile (first-call overheads)
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                trainer.step(1, 1)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))


# ---- report -----------------------------------------------------------------------------------------
def tables(cells, rows) -> str:
    out = ["| row | updates | samples | wall (s) | s/update mean (median) | s/sample mean (median) | set "
           "| chroma [95% CI] | share of FK's gain kept [95% CI] | checker acc. [95% CI] | shapes-clip |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t = cells.get(row, "training")
        med = None if t is None else statistics.median(t["update_seconds"])  # robust to the machine's load spikes
        train_cols = ("—",) * 5 if t is None else (
            t["updates"], t["samples"], f"{t['wall_seconds']:.0f}", f"{t['seconds_per_update']:.2f} ({med:.2f})",
            f"{t['seconds_per_sample']:.2f} ({med / BATCH:.2f})")
        for name in ("train", "heldout"):
            c = cells.get(row, name)
            share = style.kept(cells, row, name) if row not in ("base", "fk") else "—"
            out.append(f"| {row} | {' | '.join(map(str, train_cols))} | {name} | {style.fmt(c, 'chroma')} | {share} "
                       f"| {style.fmt(c, 'correct', pct=True)} | {'—' if c is None else format(c['clip_mean'], '.2f')} |")
    out += ["", "Reward (chroma of the update's 8 samples) vs samples drawn, mean over each tenth of the run:", "",
            "| row | " + " | ".join(f"tenth {k + 1}" for k in range(10)) + " |", "|---|" + "---|" * 10]
    for row in rows:
        t = cells.get(row, "training")
        if t is None:
            continue
        curve = t["curve"]
        n = len(curve)
        cols = []
        for k in range(10):
            part = curve[k * n // 10:max(k * n // 10 + 1, (k + 1) * n // 10)]
            cols.append(f"{sum(r for _, r in part) / len(part):.4f} (≤{part[-1][0]})")
        out.append(f"| {row} | " + " | ".join(cols) + " |")
    return "\n".join(out)


def main(argv=None) -> str:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS) - set(EXTRA)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {ROWS + EXTRA}")
    sargs = style_args(args)
    if args.smoke or args.profile:
        reference = style.fingerprint(denoiser(pipeline()))
        if args.profile:
            profile(args, args.profile, reference)
        else:
            smoke(args, rows, reference)
        return ""
    cells = style.Cells(args.cache)
    if not (args.cache / "settings.json").exists() and (args.source / "settings.json").exists():
        shutil.copy(args.source / "settings.json", args.cache / "settings.json")
    for row in ("base", "fk"):  # the paired reference cells
        for name in ("train", "heldout"):
            src = args.source / row / f"{name}.json"
            if not cells.file(row, name).exists() and src.exists():
                cells.file(row, name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, cells.file(row, name))
    cells.check_settings({"steps": sargs.steps, "seeds": sargs.seeds, "particles": sargs.particles,
                          "sets": style.sets(sargs)})
    if not args.report_only:
        from steer.zoo.shapes.reward import ShapesClipReward

        clip = ShapesClipReward()
        reference = style.fingerprint(denoiser(pipeline()))
        for row in rows:
            if row in ("base", "fk"):
                if not (cells.get(row, "train") and cells.get(row, "heldout")):
                    raise SystemExit(f"the {row} cells are missing: copy them from {args.source}")
                continue
            t0 = time.perf_counter()
            process = train_row(row, args, cells, reference)
            style.evaluate(process, row, "best_of_n", {"n": 1}, sargs, cells, clip)
            print(f"{row}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    report = tables(cells, rows)
    print(report)
    return report


if __name__ == "__main__":
    main()
