"""What every fine-tuning config shares: ``TrainConfig`` (LoRA, optimization, sampling, run bookkeeping), the
``opt`` field helper (``help`` / ``group`` metadata the CLI reuses) and the trackers' names.

Defaults are the papers' where one applies (stated in each method's module); ``learning_rate`` and
the step counts are for small runs and are meant to be set.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional


def opt(default, help: str, group: str, **kw):
    """A dataclass field with ``help`` and ``group`` metadata."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "group": group}, **kw)
    return field(default=default, metadata={"help": help, "group": group}, **kw)


# accelerate's tracker names (``accelerate.utils.LoggerType`` without "all", which would start every installed one)
TRACKERS = ("tensorboard", "wandb", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab")


def tracker_names(report_to: Optional[str]) -> list[str]:
    """The tracker names of a ``report_to`` value (``"tensorboard,wandb"`` -> both), [] for None."""
    if report_to is None:
        return []
    return [n.strip().lower() for n in str(report_to).split(",") if n.strip()]


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass
class TrainConfig:
    """What every method shares: LoRA, optimization, sampling, run bookkeeping."""

    # LoRA
    lora_rank: int = opt(4, "LoRA rank r.", "lora")
    lora_alpha: Optional[float] = opt(None, "LoRA alpha α (scale α/r); default r.", "lora")
    target_modules: tuple = opt(("to_q", "to_k", "to_v", "to_out.0"), "Denoiser modules that get LoRA.", "lora")
    # optimization
    learning_rate: float = opt(1e-4, "AdamW learning rate.", "optimization")
    adam_beta1: float = opt(0.9, "AdamW β1.", "optimization")
    adam_beta2: float = opt(0.999, "AdamW β2.", "optimization")
    adam_weight_decay: float = opt(1e-4, "AdamW weight decay.", "optimization")
    adam_epsilon: float = opt(1e-8, "AdamW ε.", "optimization")
    lr_warmup_steps: int = opt(0, "Linear warm-up steps, then constant.", "optimization")
    gradient_accumulation_steps: int = opt(1, "Micro-batches accumulated per optimizer step.", "optimization")
    max_grad_norm: Optional[float] = opt(1.0, "Clip the LoRA gradient norm to this (None: no clipping).", "optimization")
    max_steps: int = opt(100, "Optimizer steps to run.", "optimization")
    ema_decay: Optional[float] = opt(None, "EMA of the LoRA weights with this decay (None: off); saved as lora_ema/.",
                                     "optimization")
    # sampling
    prompts_per_step: int = opt(1, "Prompts drawn per micro-batch.", "sampling")
    # runtime
    mixed_precision: str = opt("no", "accelerate mixed precision: no, fp16 or bf16.", "runtime")
    gradient_checkpointing: bool = opt(False, "Recompute denoiser activations in backward (less memory).", "runtime")
    seed: int = opt(0, "Seed of every random choice (prompts, noise, timesteps).", "runtime")
    checkpoint_every: int = opt(50, "Save a resumable checkpoint every N steps.", "runtime")
    keep_checkpoints: int = opt(2, "Checkpoints kept on disk (older ones are deleted).", "runtime")
    preset: Optional[str] = opt(None, "The reference preset these settings started from (steer.finetune.presets).",
                                "runtime")
    report_to: Optional[str] = opt(None, "Experiment trackers (accelerate's), comma-separated: tensorboard, wandb, "
                                         "trackio, comet_ml, aim, mlflow, clearml, dvclive, swanlab; each step's "
                                         "metrics.jsonl numbers go to them (logs in DIR/trackers/). None = off.",
                                   "runtime")
    log_images_every: int = opt(0, "With report_to: the step's sampled images go to the trackers every N steps "
                                   "(grpo); 0 = never.", "runtime")

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        for name in ("lora_rank", "gradient_accumulation_steps", "max_steps", "prompts_per_step",
                     "checkpoint_every", "keep_checkpoints"):
            v = getattr(self, name)
            _require(isinstance(v, int) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        _require(self.lora_alpha is None or self.lora_alpha > 0, f"lora_alpha must be > 0, got {self.lora_alpha}")
        _require(self.learning_rate > 0 and math.isfinite(self.learning_rate),
                 f"learning_rate must be a positive number, got {self.learning_rate}")
        _require(self.lr_warmup_steps >= 0, f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        _require(self.max_grad_norm is None or self.max_grad_norm > 0,
                 f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        _require(self.ema_decay is None or 0 < self.ema_decay < 1, f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")
        _require(self.mixed_precision in ("no", "fp16", "bf16"),
                 f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        _require(len(self.target_modules) > 0, "target_modules must name at least one module")
        _require(self.report_to is None or (isinstance(self.report_to, str) and bool(tracker_names(self.report_to))
                                            and all(n in TRACKERS for n in tracker_names(self.report_to))),
                 f"report_to must be None or tracker names from {', '.join(TRACKERS)} (comma-separated), "
                 f"got {self.report_to!r}")
        _require(isinstance(self.log_images_every, int) and not isinstance(self.log_images_every, bool)
                 and self.log_images_every >= 0,
                 f"log_images_every must be an integer >= 0 (0 = no images), got {self.log_images_every!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["method"] = self.method
        return d

    method = "base"
