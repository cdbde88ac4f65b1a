"""``steer finetune``: the typer command (registered in ``steer/cli.py``).

    steer finetune --method draft|grpo|nft|distill|soar|dpo|kto|mapo|d3po|prdp|inpo|spo | --preset NAME --reward SPEC --prompts FILE --out DIR
                   [--dataset PICKAPIC_PATH] [--model ID_OR_PATH] [--steer-method fk --particles 8 -o KEY=VALUE ...]
                   [--max-steps N] [--lora-rank R] [--set FIELD=VALUE ...] [--report-to tensorboard]
                   [--resume | --overwrite]

Bad input exits with code 2 and one line on stderr (``--debug`` shows the traceback). Shows progress
(step, loss, reward, s/step, ETA). Writes ``DIR/lora`` (``pipe.load_lora_weights(DIR/lora)``),
``DIR/metrics.jsonl``, ``DIR/config.json``, ``DIR/reward.png`` (reward vs step), ``DIR/checkpoints/`` and, with
``--report-to``, ``DIR/trackers/``. Under ``accelerate launch`` every process trains and gradients are averaged.

``DIR`` holds one run: a fresh run into a folder with an earlier one is refused unless ``--resume``
(continue it: every setting must match the checkpoint's, except ``--max-steps``, and
``checkpoint_every``, ``keep_checkpoints``, ``gradient_checkpointing``, which only warn) or
``--overwrite`` (delete its checkpoints/, metrics.jsonl, config.json, lora/ and lora_ema/ first).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from steer import io
from steer.errors import SteerError
from steer.finetune.progress import ProgressBar


def _preset(name: Optional[str], method: Optional[str], steps, guidance):
    """(preset config fields, method, steps, guidance): the preset's where not given explicitly."""
    if name is None:
        if method is None:
            raise SteerError("--method is required (draft, grpo, nft, distill, soar, dpo, kto, mapo, d3po or prdp), or give a --preset")
        return {}, method, steps, guidance
    from steer.finetune import presets

    p = presets.get(name, method)
    base = {**p.config, "preset": name}
    return (base, p.method, p.process["num_inference_steps"] if steps is None else steps,
            p.process["guidance_scale"] if guidance is None else guidance)


STEERED = ("distill", "soar", "dpo", "kto", "mapo", "inpo")  # methods whose data come from a steering method


def _prompts(prompts_file: Optional[Path], dataset: Optional[str], method: str) -> list[str]:
    """The prompts: ``--prompts`` (required unless ``--dataset`` supplies the captions of dpo / kto)."""
    if dataset is not None and method not in ("dpo", "kto", "mapo", "inpo"):
        raise SteerError(f"--dataset is read by --method dpo, kto, mapo or inpo, not {method}")
    if prompts_file is None:
        if dataset is None:
            raise SteerError("--prompts FILE is required (one prompt per line), or --dataset for dpo / kto / mapo")
        return []
    return io.read_prompts(prompts_file)


def build_config(method: str, explicit: dict, settings: List[str], steer_options: dict, base: Optional[dict] = None):
    """The method's config from a preset's fields (``base``), explicit options, ``--set FIELD=VALUE``
    pairs and steering options, each overriding the one before."""
    from steer.finetune.config import CONFIGS

    if method not in CONFIGS:
        raise SteerError(f"--method must be one of {', '.join(CONFIGS)}, got {method!r}")
    cls = CONFIGS[method]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = dict(base or {})
    kwargs.update({k: v for k, v in explicit.items() if v is not None and k in fields})
    defaults = {name: f.default if f.default is not dataclasses.MISSING else None for name, f in fields.items()}
    for key, value in io.parse_options(settings, defaults, "--set", allow_none=True).items():
        if key not in fields:
            raise SteerError(f"--set {key}: {method} has no setting {key!r}; its settings: {', '.join(fields)}")
        kwargs[key] = value
    if method in STEERED:
        kwargs["steer_options"] = steer_options
    elif steer_options:
        raise SteerError("--steer-method options (--particles, -o) only apply to --method distill, dpo, kto or mapo")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise SteerError(str(e)) from None


def steer_options(steer_method: str, particles: Optional[int], options: List[str]) -> dict:
    """Options of the steering method used by distill, typed by the method's own defaults."""
    from steer.catalog import check_options, method_options, resolve_method

    fn = resolve_method(steer_method)
    defaults = method_options(fn)
    out = io.parse_options(options, defaults, "--option", allow_none=True)
    if particles is not None:
        if particles < 1:
            raise SteerError("--particles must be >= 1")
        key = "particles" if "particles" in defaults else "n" if "n" in defaults else None
        if key is None:
            raise SteerError(f"--particles does not apply to steering method {steer_method!r}; use -o KEY=VALUE")
        out[key] = particles
    check_options(fn, out, steer_method)
    return out


# Updates per prompt below which the shapes-world benchmarks saw a LoRA carry little (benchmarks/README.md,
# "Amortization"): relational layout moved only with ~250 per caption (distill_ceiling.py), the chroma style
# with ~100 (amortize_style.py).
MIN_UPDATES_PER_PROMPT = 100


def updates_per_prompt(config, num_prompts: int) -> float:
    """How many times a run trains on each prompt in expectation: samples entering the loss per optimizer
    step (prompts × group for online methods, the micro-batch for methods fitting stored samples) × steps ×
    accumulation / prompts."""
    per_step = getattr(config, "train_batch_size", None) if config.method in STEERED else None
    if per_step is None:
        per_step = config.prompts_per_step * getattr(config, "group_size", 1)
    return per_step * config.max_steps * config.gradient_accumulation_steps / max(1, num_prompts)


def _announce_updates(config, num_prompts: int) -> None:
    """One stderr line with the updates per prompt the run will take; a warning when below the measured need."""
    k = updates_per_prompt(config, num_prompts)
    typer.echo(f"{config.method}: {config.max_steps} steps over {num_prompts} prompt(s): {k:.0f} updates per prompt",
               err=True)
    if k < MIN_UPDATES_PER_PROMPT:
        need = math.ceil(MIN_UPDATES_PER_PROMPT * config.max_steps / k)
        typer.echo(f"warning: {k:.0f} updates per prompt is below the ~{MIN_UPDATES_PER_PROMPT} a LoRA needed on the "
                   f"shapes world (benchmarks/README.md); raise --max-steps to ~{need} or train on fewer prompts",
                   err=True)


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    """Before any model loads: ``--out`` holds no earlier run, or ``--resume`` / ``--overwrite`` says what to do."""
    from steer.finetune import checkpoint
    from steer.finetune.run_folder import earlier_run

    io.check_free(out)  # another run holding --out is named (PID) before anything else is said about it
    if resume and overwrite:
        raise SteerError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                         "--overwrite deletes it; give one")
    earlier = earlier_run(out)
    if resume:
        if checkpoint.latest(out / "checkpoints") is None:
            fix = "start over with --overwrite" if earlier else "run without --resume first"
            raise SteerError(f"--resume: no checkpoint in {str(out / 'checkpoints')!r}; {fix}")
        return
    if earlier and not overwrite:
        raise SteerError(f"--out {str(out)!r} holds an earlier run ({', '.join(earlier)}); continue it with --resume, "
                         f"replace it with --overwrite, or choose another --out")


def run_finetune(method: str, reward: Optional[str], prompts: list[str], out: Path, *, model: Optional[str], config,
                 resume: bool, steps: Optional[int], guidance: Optional[float], device: Optional[str],
                 overwrite: bool = False, eval_reward: Optional[str] = None):
    from steer.api import resolve_process, resolve_reward
    from steer.finetune import METHODS
    from steer.finetune.sharding import load_devices

    device, reward_device = load_devices(device)
    process = resolve_process(model, device=device, num_inference_steps=steps, guidance_scale=guidance)
    reward_device = reward_device or getattr(process, "device", None)
    needs_reward = reward is not None or getattr(config, "source", None) != "dataset"
    reward_model = resolve_reward(reward or "hps", device=reward_device) if needs_reward else None
    eval_model = None if eval_reward is None else resolve_reward(eval_reward, device=reward_device)
    with ProgressBar(config.max_steps) as bar, _one_line_warnings():
        return METHODS[method](process, reward_model, prompts, config, out_dir=out, resume=resume,
                               overwrite=overwrite, callback=bar, eval_reward=eval_model)


class _one_line_warnings(warnings.catch_warnings):
    """Inside the block a ``SteerWarning`` prints as one ``warning: ...`` line on stderr."""

    def __enter__(self):
        super().__enter__()
        from steer.errors import SteerWarning

        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, SteerWarning):
                typer.echo(f"warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.simplefilter("always", SteerWarning)
        warnings.showwarning = show
        return self


def finetune(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="draft (reward backprop), grpo (DDPO / "
                                         "Flow-GRPO), nft (DiffusionNFT), distill, soar (self-correction), dpo, kto, mapo, d3po or prdp "
                                         "(default: the preset's)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A reference's defaults: ddpo, flow_grpo, alignprop, "
                                         "draft_k, draft_lv, diffusion_dpo, diffusion_kto, diffusion_nft, mapo, d3po, prdp (flags and --set "
                                         "override them)."),
    reward: Optional[str] = typer.Option(None, "--reward", "-r", help="Reward spec, e.g. hps, jpeg or hps=1,clip=0.5 "
                                         "(default hps; a --dataset run needs none)."),
    eval_reward: Optional[str] = typer.Option(None, "--eval-reward", help="A held-out reward spec logged per step "
                                              "(eval_reward_mean in metrics.jsonl) on the step's images, never trained on."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="A text file with one prompt per line "
                                                "(required unless --dataset gives the captions)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="dpo / kto / mapo: a Pick-a-Pic-layout preference "
                                          "dataset (.parquet / .jsonl file or folder: caption, jpg_0, jpg_1, "
                                          "label_0), streamed; sets source=dataset."),
    out: Path = typer.Option(..., "--out", help="Output folder (lora/, metrics.jsonl, checkpoints/)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model id or local diffusers folder."),
    steer_method: str = typer.Option("fk", "--steer-method", help="distill / soar / dpo / kto (and nft with "
                                     "--particles or -o): steering method that makes the samples (fk, dts_star, "
                                     "best_of_n, reno)."),
    particles: Optional[int] = typer.Option(None, "--particles", help="distill / soar / dpo / kto / nft: particles (fk) or "
                                            "candidates (best_of_n)."),
    option: List[str] = typer.Option(None, "--option", "-o", help="distill / soar / dpo / kto / nft: steering option KEY=VALUE "
                                     "(repeatable)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="LoRA rank."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default: the rank)."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", "--lr", help="AdamW learning rate."),
    settings: List[str] = typer.Option(None, "--set", help="Any config field FIELD=VALUE (repeatable), e.g. k=2."),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="Experiment trackers (accelerate's): "
                                            "tensorboard, wandb, ... (comma-separated) get each step's metrics under "
                                            "DIR/trackers/; --set log_images_every=N adds sample images (grpo)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="num_inference_steps of the sampling chain."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="guidance_scale."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu, ..."),
    resume: bool = typer.Option(False, "--resume", help="Continue from DIR/checkpoints/latest (same settings; "
                                "--max-steps may change; checkpoint_every, keep_checkpoints, gradient_checkpointing "
                                "may change with a warning)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the earlier run in --out (checkpoints/, "
                                   "metrics.jsonl, config.json, lora/, lora_ema/, reward.png, trackers/) and start "
                                   "afresh."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
):
    """Fine-tune a LoRA with a reward: reward backprop, GRPO, distilled steering, or preference optimization."""
    with io.boundary(debug, interrupted="interrupted: the last checkpoint was kept; continue with --resume"):
        io.output_dir(out, create=False)
        _check_out(out, resume, overwrite)
        base, method, steps, guidance = _preset(preset, method, steps, guidance)
        prompts = _prompts(prompts_file, dataset, method)
        if method in STEERED or (method == "nft" and (particles is not None or option)):
            opts = steer_options(steer_method, particles, option or [])
            explicit_steer = steer_method
        else:
            if particles is not None or option:
                raise SteerError("--particles and --option only apply to --method distill, soar, dpo, kto, mapo or nft")
            opts, explicit_steer = {}, None
        config = build_config(method, dict(max_steps=max_steps, lora_rank=lora_rank, lora_alpha=lora_alpha,
                                           learning_rate=learning_rate, seed=seed, steer_method=explicit_steer,
                                           dataset=dataset, source="dataset" if dataset else None,
                                           report_to=report_to),
                              settings or [], opts, base=base)
        if config.report_to:  # a missing tracker package is named before any model loads
            from steer.finetune.config import tracker_names
            from steer.finetune.distributed import check_trackers

            check_trackers(tracker_names(config.report_to))
        if prompts:
            _announce_updates(config, len(prompts))
        result = run_finetune(method, reward, prompts, out, model=model, config=config, resume=resume,
                              steps=steps, guidance=guidance, device=device, overwrite=overwrite,
                              eval_reward=eval_reward)
        last = result.metrics[-1] if result.metrics else {}
        typer.echo(f"saved LoRA to {result.lora_dir} after {result.steps} steps"
                   + (f" (last mean reward {last['reward_mean']:.4g})" if last.get("reward_mean") is not None else ""))
