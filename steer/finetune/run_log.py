"""What a fine-tuning run records (``Trainer``'s logging side): each step's summary over micro-batches and ranks,
``metrics.jsonl`` (appended atomically per line, truncated to the checkpoint on a resume), and accelerate's
experiment trackers (``config.report_to``) with the sampled images every ``log_images_every`` steps."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from steer import io
from steer.finetune import run_folder
from steer.finetune.config import tracker_names


class RunLog:
    """Mixed into ``Trainer``: reads its ``accelerator``, ``config``, ``out_dir``, ``world``, ``trace``,
    ``scheduler`` and ``eval_reward``."""

    def _summarize(self, records: list[dict], step: int, grad_norm: float) -> dict[str, Any]:
        rewards = self._gathered(records, "rewards")
        out = {"step": step + 1, "loss": sum(r["loss"] for r in records) / len(records),
               "reward_mean": float(rewards.mean()) if rewards.numel() else None,
               "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
               "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
               "nfe": self.trace.nfe, "reward_calls": self.trace.reward_calls}
        for key in ("kl", "clip_fraction", "approx_kl", "implicit_accuracy", "kl_reference", "model_error",
                    "reference_error", "desirable_share", "margin_loss", "tie_share", "pairs"):
            vals = [r[key] for r in records if r.get(key) is not None]
            out[key] = sum(vals) / len(vals) if vals else None
        if self.eval_reward is not None:
            held_out = self._gathered(records, "eval_rewards")
            out["eval_reward_mean"] = float(held_out.mean()) if held_out.numel() else None
            out["eval_reward_std"] = float(held_out.std()) if held_out.numel() > 1 else 0.0
        return out

    def _gathered(self, records: list[dict], key: str) -> torch.Tensor:
        """The step's ``key`` scores of every micro-batch (and every rank), (N,)."""
        parts = [torch.as_tensor(r[key]).float().reshape(-1) for r in records if r.get(key) is not None]
        values = torch.cat(parts) if parts else torch.zeros(0)
        if self.world > 1:
            values = self.accelerator.gather(values.to(self.accelerator.device)).cpu()
        return values

    # ---- output -------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def _log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            with io.deferred_interrupts(), open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: name the file
            raise io.naming_path(e, self.metrics_path) from e

    # ---- trackers (accelerate's) ---------------------------------------------------------
    @property
    def tracker_dir(self) -> Path:
        """Where file-based trackers write (tensorboard: ``trackers/steer-finetune/events.out.tfevents.*``)."""
        return self.out_dir / "trackers"

    def wants_images(self, step: int) -> bool:
        """Whether a method should return its sampled images (``"images"``, (B, 3, H, W) in [0, 1]) in the
        record of 0-based ``step``: trackers on, ``log_images_every`` > 0 and ``step`` a multiple of it."""
        every = self.config.log_images_every
        return self._tracking and every > 0 and step % every == 0 and self.accelerator.is_main_process

    def _start_trackers(self) -> None:
        if not tracker_names(self.config.report_to) or not self.accelerator.log_with:
            return
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v, default=str)
                   for k, v in self.config.to_dict().items() if v is not None}
        self.accelerator.init_trackers("steer-finetune", config=hparams)
        self._tracking = True

    def _track(self, record: dict) -> None:
        """The step's numeric ``metrics.jsonl`` values (None skipped) and its images, if any, to the trackers."""
        if not self._tracking:
            return
        values = {k: float(v) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(values, step=record["step"])
        images, self._step_images = self._step_images, None
        if images is None or not self.accelerator.is_main_process:
            return
        images = images[:16].clamp(0, 1)  # (N, 3, H, W): a few per step keep the event files small
        for name in tracker_names(self.config.report_to):
            tracker = self.accelerator.get_tracker(name)
            if hasattr(tracker, "log_images"):
                tracker.log_images({"samples": images}, step=record["step"])

    def _end_trackers(self) -> None:
        """Close the trackers (``accelerator.end_training`` would also destroy a multi-process group the caller
        may still use, so only its ``finish`` part)."""
        if not self._tracking:
            return
        self._tracking = False
        if self.accelerator.is_main_process:
            for tracker in self.accelerator.trackers:
                tracker.finish()
        self.accelerator.trackers = []

    def _truncate_metrics(self, step: int) -> None:
        """Keep the records of steps <= ``step`` (a line torn by a kill mid-append is dropped)."""
        if self.accelerator.is_main_process:
            run_folder.truncate_metrics(self.metrics_path, step)

    def _logged(self) -> list[dict]:
        """Every record of ``metrics.jsonl`` (the steps before a resume too)."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
