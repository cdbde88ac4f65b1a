"""The output folder of one fine-tuning run, and the settings a ``--resume`` must share with its checkpoint.

A fresh run refuses a folder that holds an earlier one unless ``overwrite`` (which first deletes that
run's ``RUN_FILES``: checkpoints, metrics, config and LoRA folders); a resumed run checks that its
settings match the checkpoint's (``settings``): a change that alters what is trained is an error
naming the setting; ``max_steps`` may change (that is how a run is extended) and ``HARMLESS``
settings may change with a ``SteerWarning``. ``steer.finetune.trainer.Trainer`` uses these.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
import weakref
from pathlib import Path
from typing import Any, Callable, Optional

from steer import io
from steer.errors import SteerError, SteerWarning
from steer.finetune import checkpoint, lora

# settings a resume may change: FREE silently (max_steps extends or shortens the run), HARMLESS with a
# warning (they change when checkpoints are written or how memory is spent, not the trained weights)
FREE = ("max_steps",)
HARMLESS = ("checkpoint_every", "keep_checkpoints", "gradient_checkpointing", "eval_reward", "report_to",
            "log_images_every")
_FLAGS = {"method": "--method", "model": "--model", "denoiser": "--model", "reward": "--reward",
          "prompts": "--prompts (the file's contents)", "num_prompts": "--prompts", "num_inference_steps": "--steps",
          "guidance_scale": "--guidance", "learning_rate": "--learning-rate", "seed": "--seed",
          "lora_rank": "--lora-rank", "lora_alpha": "--lora-alpha", "steer_method": "--steer-method",
          "steer_options": "--particles / -o", "processes": "the number of processes",
          "dataset_contents": "--dataset (the data's contents changed; start over with --overwrite)"}
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "lora", "lora_ema", "reward.png", "trackers")


def earlier_run(out_dir) -> list[str]:
    """What of an earlier fine-tuning run ``out_dir`` holds (``RUN_FILES`` present), e.g. ``['checkpoints/']``."""
    out_dir = Path(out_dir)
    found = []
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir() and any(path.iterdir()):
            found.append(name + "/")
        elif path.is_file():
            found.append(name)
    return found


def clear_run(out_dir) -> None:
    """Delete an earlier run's ``RUN_FILES`` from ``out_dir`` (nothing else there is touched)."""
    out_dir = Path(out_dir)
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _plain(value):
    """``value`` as JSON would give it back (tuples as lists), for comparing settings."""
    return json.loads(json.dumps(value, default=str))


def prepare(out_dir: Path, checkpoint_dir: Path, accelerator, resume: bool, overwrite: bool) -> None:
    """Hold ``out_dir`` for this run (a second run into it is refused, see ``hold``); refuse a folder
    holding an earlier run (unless ``resume`` / ``overwrite``); delete stale temporaries."""
    if resume and overwrite:
        raise SteerError("--resume and --overwrite exclude each other: --resume continues the run in --out, "
                         "--overwrite deletes it; give one")
    hold(out_dir, accelerator)
    earlier = earlier_run(out_dir)
    if earlier and not resume and not overwrite:
        raise SteerError(f"{out_dir} holds an earlier run ({', '.join(earlier)}); continue it with --resume, "
                         f"replace it with --overwrite, or choose another --out")
    if accelerator.is_main_process:
        if overwrite and earlier:
            clear_run(out_dir)
        for folder in (out_dir, checkpoint_dir):
            io.remove_stale_temporaries(folder)
    accelerator.wait_for_everyone()


_RELEASES: dict[str, weakref.finalize] = {}  # held folder -> the release tied to its run's accelerator


def hold(out_dir: Path, accelerator) -> None:
    """Hold ``out_dir`` for the run of ``accelerator`` (``io.hold_for_run``: its main process holds it for
    every rank; another run's is refused naming its PID) until the process ends or ``accelerator`` is
    dropped (the run's ``Trainer`` is gone), so a later run of this process or another may use it."""
    io.hold_for_run(out_dir, accelerator)
    if not accelerator.is_main_process:
        return
    key = str(Path(out_dir).resolve())
    earlier = _RELEASES.pop(key, None)
    if earlier is not None:  # held again by a new run of this process: released with the new one
        earlier.detach()
    with contextlib.suppress(TypeError):  # no weak references to it: held until the process ends
        _RELEASES[key] = weakref.finalize(accelerator, io.release_folder, key)


def settings(trainer) -> dict[str, Any]:
    """What ``trainer`` trains with: the config, method, model, chain, reward, prompts, processes, and a
    preference dataset's contents (``dataset_files.fingerprint``)."""
    name = getattr(trainer.pipe, "name_or_path", None)
    if name and os.path.exists(str(name)):
        name = str(Path(name).resolve())
    run = {"method": trainer.method, "model": name or type(trainer.pipe).__name__,
           "denoiser": type(lora.denoiser(trainer.pipe)).__name__, "num_inference_steps": trainer.process.num_steps,
           "guidance_scale": getattr(trainer.process, "guidance_scale", None),
           "reward": None if trainer.reward is None else getattr(trainer.reward, "name", type(trainer.reward).__name__),
           "eval_reward": None if trainer.eval_reward is None else
           getattr(trainer.eval_reward, "name", type(trainer.eval_reward).__name__),
           "prompts": hashlib.sha256("\n".join(trainer.prompts).encode()).hexdigest(),
           "num_prompts": len(trainer.prompts), "processes": trainer.world}
    if getattr(trainer.config, "source", None) == "dataset":  # its contents: a resume refuses changed data
        from steer.finetune.dataset_files import dataset_fingerprint

        run["dataset_contents"] = dataset_fingerprint(trainer)
    return _plain({**{k: v for k, v in trainer.config.to_dict().items() if k != "method"}, **run})


def _check_settings(current: dict, saved: dict, path: Path) -> None:
    saved = _plain(saved)
    changed = [k for k in current if k in saved and saved[k] != current[k] and k not in FREE]
    wrong = [k for k in changed if k not in HARMLESS]
    if wrong:
        diffs = "; ".join(f"{k} was {saved[k]!r}, now {current[k]!r} ({_FLAGS.get(k, f'--set {k}=...')})"
                          if k != "prompts" else f"the prompts differ ({_FLAGS[k]})" for k in wrong)
        raise SteerError(f"--resume: the settings differ from those of {path}: {diffs}; resume with the "
                         f"checkpoint's settings, or start over with --overwrite")
    for k in changed:  # stacklevel 3: the warning names the caller of resume_state (Trainer._resume)
        warnings.warn(f"--resume: {k} changed from {saved[k]!r} to {current[k]!r} (harmless: the trained "
                      f"weights are the same)", SteerWarning, stacklevel=3)


def resume_state(checkpoint_dir: Path, method: str, current: Callable[[], dict]) -> Optional[dict]:
    """The state of the latest checkpoint in ``checkpoint_dir`` (None when there is none), checked: it is
    complete, made by ``method``, and its settings match ``current()`` (called only when there is one)."""
    path = checkpoint.latest(checkpoint_dir)
    if path is None:
        return None
    state = checkpoint.load(path)
    missing = [k for k in ("lora", "optimizer", "scheduler", "rng") if k not in state]
    if missing:
        raise checkpoint.CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; "
                                         f"{checkpoint._last_good_hint(path.parent, path)}")
    if state.get("method") != method:
        raise ValueError(f"checkpoint {path} was made by method {state.get('method')!r}, not {method!r}; "
                         f"use another --out folder or the same method")
    _check_settings(current(), state.get("settings") or {}, path)
    return state


def truncate_metrics(metrics_path: Path, step: int) -> None:
    """Keep the records of steps <= ``step`` in ``metrics_path`` (a line torn by a kill mid-append is dropped)."""
    if not metrics_path.exists():
        return
    kept = []
    for line in metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    io.atomic_write_bytes(metrics_path, "".join(ln + "\n" for ln in kept).encode())
