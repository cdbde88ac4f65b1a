"""Configs of the methods that fit stored samples: distillation of steered samples (distill, SOAR) and
preference optimization on pairs or labels (Diffusion-DPO / KTO, MaPO, InPO).

See ``steer.finetune.config`` (the registry) and ``config_base`` (what every method shares)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from steer.finetune.config_base import TrainConfig, _require, opt


@dataclass
class DistillConfig(TrainConfig):
    """Steering -> LoRA, RAFT-style (see ``steer.finetune.distill``)."""

    steer_method: str = opt("fk", "Steering method that makes the samples: fk, dts_star, best_of_n, reno.", "method")
    steer_options: dict = opt({}, "Options of the steering method (e.g. particles=8).", "method")
    samples_per_prompt: int = opt(1, "Steered samples drawn per prompt and round.", "method")
    top_fraction: float = opt(1.0, "Keep this top fraction of each prompt's samples by reward (RAFT).", "method")
    rounds: int = opt(1, "Sample-then-train rounds; >1 re-samples with the updated LoRA (online).", "method")
    steps_per_round: Optional[int] = opt(None, "Optimizer steps per round (default max_steps / rounds).", "method")
    train_batch_size: int = opt(4, "Kept samples per micro-batch of the denoising loss.", "method")
    loss_space: str = opt("model", "Denoising loss on the model's own output (model: ε / v / flow velocity, "
                                   "RAFT) or on the implied clean sample x̂0 (x0: weights noisy steps by 1/SNR).",
                          "method")
    guided: bool = opt(False, "Fit the guided prediction (classifier-free guidance at the process' "
                              "guidance_scale, as the sampler uses it) instead of the conditional branch alone.",
                       "method")
    learning_rate: float = opt(1e-4, "AdamW learning rate.", "optimization")

    def __post_init__(self):
        super().__post_init__()
        _require(isinstance(self.steer_method, str) and self.steer_method != "",
                 "steer_method must name a steering method (fk, dts_star, best_of_n, reno)")
        _require(self.samples_per_prompt >= 1, f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        _require(0 < self.top_fraction <= 1, f"top_fraction must be in (0, 1], got {self.top_fraction}")
        _require(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        _require(self.train_batch_size >= 1, f"train_batch_size must be >= 1, got {self.train_batch_size}")
        _require(self.loss_space in ("model", "x0"), f"loss_space must be 'model' or 'x0', got {self.loss_space!r}")
        if self.steps_per_round is None:
            _require(self.max_steps >= self.rounds,
                     f"max_steps ({self.max_steps}) must be >= rounds ({self.rounds}); raise max_steps")
            self.steps_per_round = self.max_steps // self.rounds
        _require(self.steps_per_round >= 1, f"steps_per_round must be >= 1, got {self.steps_per_round}")

    method = "distill"

@dataclass
class SoarConfig(DistillConfig):
    """SOAR on-policy self-correction toward steered samples (see ``steer.finetune.soar``)."""

    aux_points: int = opt(6, "Auxiliary re-noised states per sample and step (SOAR: trajectory_length 6); 0 = "
                             "the plain denoising loss.", "method")
    aux_weight: float = opt(1.0, "λ of the auxiliary loss (SOAR: lambda_aux 1.0).", "method")
    rollout_guidance: Optional[float] = opt(None, "Guidance of the stop-gradient rollout step (SOAR: 4.5); None = "
                                                  "the process' guidance_scale.", "method")

    def __post_init__(self):
        super().__post_init__()
        _require(self.aux_points >= 0, f"aux_points must be >= 0, got {self.aux_points}")
        _require(self.aux_weight >= 0 and math.isfinite(self.aux_weight), f"aux_weight must be >= 0, got {self.aux_weight}")
        _require(self.rollout_guidance is None or self.rollout_guidance >= 1,
                 f"rollout_guidance must be >= 1 or None, got {self.rollout_guidance}")

    method = "soar"

@dataclass
class PreferenceConfig(TrainConfig):
    """What Diffusion-DPO and Diffusion-KTO share: where the preference data comes from
    (``steer.finetune.preference_data``) and the micro-batch."""

    beta: float = opt(5000.0, "β of the implicit reward β·(log p_θ − log p_ref) (Diffusion-DPO: 5000).", "method")
    source: str = opt("steering", "Where the preference data comes from: steering (online pairs: a steered sample "
                                  "against a base one, labelled by the reward), dataset (a Pick-a-Pic-layout "
                                  "dataset on disk, see dataset), verifier (samples labelled pass / fail by "
                                  "reward > threshold).", "data")
    dataset: Optional[str] = opt(None, "source=dataset: a .parquet or .jsonl file, or a folder of them, with the "
                                       "columns caption, jpg_0, jpg_1, label_0 (Pick-a-Pic).", "data")
    shuffle_buffer: int = opt(1000, "source=dataset: rows in the streaming shuffle buffer.", "data")
    steer_method: str = opt("fk", "source=steering / verifier: the method that makes the samples (fk, dts_star, "
                                  "best_of_n, reno, ...).", "data")
    steer_options: dict = opt({}, "Options of the steering method (e.g. particles=8).", "data")
    loser: str = opt("base", "source=steering: the other sample of a pair: base (the current model's plain sample, "
                             "seed for seed) or worst (the lowest-reward of samples_per_prompt steered samples).",
                     "data")
    samples_per_prompt: int = opt(1, "source=steering / verifier: samples (steering: pairs) drawn per prompt and "
                                     "round.", "data")
    regenerate_every: int = opt(0, "Re-draw the online data from the current LoRA every N optimizer steps "
                                   "(on-policy); 0 = draw it once before training (off-policy).", "data")
    threshold: float = opt(0.5, "source=verifier: a sample is desirable when its reward > threshold.", "data")
    train_batch_size: int = opt(4, "Pairs (DPO) or samples (KTO) per micro-batch.", "method")
    loss_space: str = opt("model", "Denoising errors on the model's own output (model: ε / v / flow velocity, the "
                                   "papers') or on the implied clean sample x̂0 (x0: weights step t by 1/SNR_t).",
                          "method")
    guided: bool = opt(False, "Denoising errors of the guided prediction (classifier-free guidance at the "
                              "process' guidance_scale, as the sampler uses it; model and reference alike) "
                              "instead of the conditional branch alone (the papers').", "method")
    learning_rate: float = opt(1e-4, "AdamW learning rate.", "optimization")

    def __post_init__(self):
        super().__post_init__()
        _require(self.loss_space in ("model", "x0"), f"loss_space must be 'model' or 'x0', got {self.loss_space!r}")
        _require(math.isfinite(self.beta) and self.beta > 0,
                 f"beta must be a positive number (Diffusion-DPO uses 5000, Diffusion-KTO 1000), got {self.beta}")
        _require(self.source in ("steering", "dataset", "verifier"),
                 f"source must be 'steering', 'dataset' or 'verifier', got {self.source!r}")
        _require(self.source != "dataset" or bool(self.dataset),
                 "source='dataset' needs dataset=PATH (a .parquet / .jsonl file or folder; --dataset on the CLI)")
        _require(self.dataset is None or self.source == "dataset",
                 f"dataset={self.dataset!r} is only read with source='dataset' (--dataset sets both)")
        _require(self.loser in ("base", "worst"), f"loser must be 'base' or 'worst', got {self.loser!r}")
        _require(self.loser != "worst" or self.source != "steering" or self.samples_per_prompt >= 2,
                 "loser='worst' needs samples_per_prompt >= 2 (the worst of several steered samples)")
        _require(self.samples_per_prompt >= 1, f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        _require(self.regenerate_every >= 0, f"regenerate_every must be >= 0, got {self.regenerate_every}")
        _require(math.isfinite(self.threshold), f"threshold must be a finite number, got {self.threshold}")
        _require(self.shuffle_buffer >= 1, f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        _require(self.train_batch_size >= 1, f"train_batch_size must be >= 1, got {self.train_batch_size}")

@dataclass
class DPOConfig(PreferenceConfig):
    """Diffusion-DPO (see ``steer.finetune.dpo``)."""

    method = "dpo"

@dataclass
class KTOConfig(PreferenceConfig):
    """Diffusion-KTO (see ``steer.finetune.kto``)."""

    beta: float = opt(1000.0, "β of the implicit reward (Diffusion-KTO's code: 1000).", "method")
    lambda_desirable: float = opt(1.0, "λ_D: weight of desirable samples' loss.", "method")
    lambda_undesirable: float = opt(1.0, "λ_U: weight of undesirable samples' loss.", "method")
    desirable_fraction: Optional[float] = opt(None, "Draw desirable samples with this probability (Diffusion-KTO's "
                                                    "positive_ratio); None = uniformly over all samples.", "data")

    def __post_init__(self):
        super().__post_init__()
        _require(self.lambda_desirable > 0 and self.lambda_undesirable > 0,
                 f"lambda_desirable and lambda_undesirable must be > 0, got {self.lambda_desirable}, "
                 f"{self.lambda_undesirable}")
        _require(self.desirable_fraction is None or 0 < self.desirable_fraction < 1,
                 f"desirable_fraction must be in (0, 1) or None, got {self.desirable_fraction}")

    method = "kto"

@dataclass
class MaPOConfig(PreferenceConfig):
    """MaPO, reference-free margin-aware preference optimization (see ``steer.finetune.mapo``)."""

    beta: float = opt(0.1, "β of the margin term (MaPO's code: --beta_mapo 0.1).", "method")
    snr_value: float = opt(0.5, "s in the per-sample score s·e / (exp(s·e) − 1) of a denoising error e (MaPO's code: "
                                "--snr_value 0.5).", "method")
    num_train_timesteps: Optional[int] = opt(None, "T multiplying the log-odds inside log σ (MaPO's code: the "
                                                   "scheduler's num_train_timesteps); None = the pipeline "
                                                   "scheduler's (1000 if it has none).", "method")

    def __post_init__(self):
        super().__post_init__()
        _require(math.isfinite(self.snr_value) and self.snr_value > 0, f"snr_value must be > 0, got {self.snr_value}")
        _require(self.num_train_timesteps is None or self.num_train_timesteps >= 1,
                 f"num_train_timesteps must be >= 1 or None, got {self.num_train_timesteps}")

    method = "mapo"

@dataclass
class InPOConfig(PreferenceConfig):
    """InPO: Diffusion-DPO on DDIM-inverted latents (see ``steer.finetune.inpo``)."""

    beta: float = opt(2000.0, "β of the implicit reward (InPO examples/sd15.sh: --beta_dpo 2000).", "method")
    inversion_eta: float = opt(0.1, "η_inv: the inversion's added noise, η_inv × the DDPM std of each inverse step "
                                    "(InPO train.py: inversion_eta = 0.1); 0 = deterministic DDIM inversion.",
                               "method")

    def __post_init__(self):
        super().__post_init__()
        _require(math.isfinite(self.inversion_eta) and self.inversion_eta >= 0,
                 f"inversion_eta must be >= 0, got {self.inversion_eta}")

    method = "inpo"
