"""Configs of the methods that train on the current model's own samples: reward backprop (DRaFT / AlignProp),
GRPO and its variants, DiffusionNFT, the trajectory preference methods (D3PO, PRDP) and SPO.

See ``steer.finetune.config`` (the registry) and ``config_base`` (what every method shares)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from steer.finetune.config_base import TrainConfig, _require, opt


@dataclass
class DraftConfig(TrainConfig):
    """DRaFT-K / DRaFT-LV / AlignProp (see ``steer.finetune.draft``)."""

    variant: str = opt("draft", "draft (last K steps), lv (K=1 with n re-noised copies), alignprop "
                                "(K drawn at random each update, see truncation).", "method")
    truncation: str = opt("gaussian", "alignprop: how the detach point D is drawn each update (gradients flow "
                                      "through the last S - D steps): gaussian, D = int(N(mean·S, std·S)) "
                                      "redrawn until 1 <= D < S (AlignProp's default), or uniform, D in 0..S-1.",
                          "method")
    truncation_mean: float = opt(0.84, "alignprop gaussian: mean of D as a fraction of the steps (42/50).", "method")
    truncation_std: float = opt(0.1, "alignprop gaussian: std of D as a fraction of the steps (5/50).", "method")
    k: int = opt(1, "DRaFT-K: steps at the end of the chain that gradients flow through.", "method")
    lv_copies: int = opt(2, "DRaFT-LV: re-noised copies of the final sample (n).", "method")
    noise_level: float = opt(0.0, "Sampling kernel noise (DDIM η / flow-SDE a); 0 = deterministic, as DRaFT.", "method")
    learning_rate: float = opt(1e-4, "AdamW learning rate.", "optimization")

    def __post_init__(self):
        super().__post_init__()
        _require(self.variant in ("draft", "lv", "alignprop"),
                 f"variant must be 'draft', 'lv' or 'alignprop', got {self.variant!r}")
        _require(self.truncation in ("gaussian", "uniform"),
                 f"truncation must be 'gaussian' or 'uniform', got {self.truncation!r}")
        _require(0 < self.truncation_mean < 1, f"truncation_mean must be in (0, 1), got {self.truncation_mean}")
        _require(self.truncation_std > 0, f"truncation_std must be > 0, got {self.truncation_std}")
        _require(self.k >= 1, f"k must be >= 1 (and at most the chain's steps), got {self.k}")
        _require(self.lv_copies >= 1, f"lv_copies must be >= 1, got {self.lv_copies}")
        _require(self.noise_level >= 0, f"noise_level must be >= 0, got {self.noise_level}")

    method = "draft"

@dataclass
class GRPOConfig(TrainConfig):
    """DDPO / Flow-GRPO (see ``steer.finetune.grpo``)."""

    group_size: int = opt(8, "G: samples per prompt; advantages are normalized within each group.", "method")
    clip_range: float = opt(1e-4, "PPO clip ε on the ratio of dimension-averaged log-probs (DDPO).", "method")
    adv_clip_max: float = opt(5.0, "Advantages clipped to ±this.", "method")
    kl_beta: float = opt(0.0, "β of the KL to the reference model (LoRA disabled); 0 = off (DDPO).", "method")
    timestep_fraction: float = opt(1.0, "Fraction of the chain's steps trained on per sample.", "method")
    inner_epochs: int = opt(1, "Passes over each batch of samples (the first pass has ratio 1).", "method")
    advantages: str = opt("group", "group: (r − group mean) / (group std + 1e-4); per_prompt: DDPO's per-prompt "
                                   "tracker (a buffer of each prompt's last rewards, batch statistics until it "
                                   "holds min_count, + 1e-6); global_std: Flow-GRPO's (group mean, std of the whole "
                                   "batch + 1e-4).", "method")
    stat_buffer_size: int = opt(16, "per_prompt: rewards kept per prompt (DDPO: 16).", "method")
    stat_min_count: int = opt(16, "per_prompt: rewards a prompt needs before its own statistics are used.", "method")
    kl_scaling: str = opt("exact", "KL to the reference: exact (‖Δμ‖² / 2·kernel variance, the Gaussian KL) or "
                                   "flow_grpo (‖Δμ‖² / 2σ_t², without the step's |Δt|; equal on diffusion).", "method")
    timestep_selection: str = opt("random", "Which int(timestep_fraction·S) steps train: random (a random subset "
                                            "per batch, DDPO) or first (the first ones in order, Flow-GRPO).",
                                  "method")
    detach_uncond: bool = opt(False, "Stop gradients through the unconditional branch of guidance (Flow-GRPO).",
                              "method")
    noise_level: Optional[float] = opt(None, "Kernel noise: DDIM η (default 1.0, DDPO) or flow-SDE a "
                                             "(default 0.7, Flow-GRPO).", "method")
    # 2026 variants (see steer.finetune.grpo_variants)
    sde_type: str = opt("sde", "Flow kernel: sde (Flow-GRPO), cps (coefficients-preserving), dance (DanceGRPO's "
                               "constant σ_t = a) or sage (SAGE-GRPO's integrated variance).", "variants")
    grad_balance: bool = opt(False, "SAGE-GRPO's gradient norm equalizer: step i's policy loss × median_j(g_j) / g_i, "
                                    "g = |∂mean/∂output| / std of the step's kernel.", "variants")
    sde_window_size: int = opt(0, "W > 0: only W consecutive steps are stochastic (ODE elsewhere) and only they "
                                  "train (Flow-GRPO-Fast, MixGRPO); 0 = every step.", "variants")
    sde_window_range: Optional[tuple] = opt(None, "(lo, hi): the window lies in steps lo..hi-1 (Flow-GRPO-Fast: "
                                                  "(0, S // 2)); None = the whole chain.", "variants")
    sde_window_schedule: str = opt("random", "random: a fresh window start per batch (Flow-GRPO-Fast); subset: W "
                                             "random steps of the range, not necessarily adjacent (Flow-Factory); "
                                             "progressive: MixGRPO's sliding window.", "variants")
    window_shift_every: int = opt(25, "progressive: optimizer steps before the window moves (MixGRPO: 25).",
                                  "variants")
    window_stride: int = opt(1, "progressive: steps the window moves by (MixGRPO prog_overlap_step: 1).", "variants")
    ratio_norm: bool = opt(False, "GRPO-Guard: centre the log-ratio and rescale it per step (s·Δlog p + ‖Δμ‖²/2s).",
                           "variants")
    shared_noise: bool = opt(False, "One initial noise per prompt's group (DanceGRPO / MixGRPO init_same_noise).",
                             "variants")
    multi_reward: str = opt("sum", "With a weighted reward spec: sum (advantages of the weighted sum, flow_grpo) "
                                   "or advantages (each reward normalized, then weighted; MixGRPO).", "variants")
    learning_rate: float = opt(3e-4, "AdamW learning rate (DDPO: 3e-4).", "optimization")

    def __post_init__(self):
        super().__post_init__()
        _require(self.advantages in ("group", "per_prompt", "global_std", "group_unbiased"),
                 f"advantages must be 'group', 'per_prompt', 'global_std' or 'group_unbiased', got {self.advantages!r}")
        self._check_variants()
        least = 1 if self.advantages == "per_prompt" else 2
        _require(self.group_size >= least, f"group_size must be >= {least} (advantages are relative to the group"
                                           f"{'' if least == 2 else ' or the prompt history'}), got {self.group_size}")
        _require(self.stat_buffer_size >= 1 and self.stat_min_count >= 1,
                 f"stat_buffer_size and stat_min_count must be >= 1, got {self.stat_buffer_size}, {self.stat_min_count}")
        _require(self.kl_scaling in ("exact", "flow_grpo"), f"kl_scaling must be 'exact' or 'flow_grpo', got {self.kl_scaling!r}")
        _require(self.timestep_selection in ("random", "first", "random_but_last"),
                 f"timestep_selection must be 'random', 'first' or 'random_but_last', got {self.timestep_selection!r}")
        _require(self.clip_range > 0, f"clip_range must be > 0, got {self.clip_range}")
        _require(self.adv_clip_max > 0, f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        _require(self.kl_beta >= 0, f"kl_beta must be >= 0, got {self.kl_beta}")
        _require(0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        _require(self.inner_epochs >= 1, f"inner_epochs must be >= 1, got {self.inner_epochs}")
        _require(self.noise_level is None or self.noise_level > 0,
                 f"noise_level must be > 0 (GRPO needs a stochastic kernel), got {self.noise_level}")

    def _check_variants(self):
        _require(self.sde_type in ("sde", "cps", "dance", "sage"),
                 f"sde_type must be 'sde', 'cps', 'dance' or 'sage', got {self.sde_type!r}")
        _require(isinstance(self.sde_window_size, int) and self.sde_window_size >= 0,
                 f"sde_window_size must be an integer >= 0 (0 = every step), got {self.sde_window_size!r}")
        if self.sde_window_range is not None:
            r = tuple(self.sde_window_range)
            _require(len(r) == 2 and all(isinstance(v, int) for v in r) and 0 <= r[0] < r[1],
                     f"sde_window_range must be (lo, hi) with 0 <= lo < hi, got {self.sde_window_range!r}")
            _require(self.sde_window_size <= r[1] - r[0],
                     f"sde_window_size {self.sde_window_size} does not fit in sde_window_range {r}; widen the range")
            self.sde_window_range = r
        _require(self.sde_window_schedule in ("random", "subset", "progressive"),
                 f"sde_window_schedule must be 'random', 'subset' or 'progressive', got {self.sde_window_schedule!r}")
        _require(self.window_shift_every >= 1 and self.window_stride >= 1,
                 f"window_shift_every and window_stride must be >= 1, got {self.window_shift_every}, {self.window_stride}")
        _require(not (self.ratio_norm and self.sde_type == "cps"),
                 "ratio_norm (GRPO-Guard) needs a Gaussian log-density; CPS's log-prob drops the variance: "
                 "use sde_type='sde' or 'dance'")
        _require(self.kl_scaling != "flow_grpo" or self.sde_type == "sde",
                 f"kl_scaling='flow_grpo' divides by Flow-GRPO's σ_t² (sde_type='sde'); with sde_type="
                 f"{self.sde_type!r} use kl_scaling='exact'")
        _require(self.multi_reward in ("sum", "advantages"),
                 f"multi_reward must be 'sum' or 'advantages', got {self.multi_reward!r}")
        _require(not (self.multi_reward == "advantages" and self.advantages == "per_prompt"),
                 "multi_reward='advantages' normalizes each reward within its group; use advantages='group', "
                 "'group_unbiased' or 'global_std' (not per_prompt)")

    method = "grpo"

@dataclass
class NFTConfig(TrainConfig):
    """DiffusionNFT (see ``steer.finetune.nft``)."""

    group_size: int = opt(8, "G: samples per prompt and step; advantages are relative to the prompt's group "
                             "(DiffusionNFT: 24).", "method")
    beta: float = opt(1.0, "β of the implicit policies v± (v⁺ = β·v_θ + (1−β)·v_old; DiffusionNFT: 1.0, 0.1 for OCR "
                           "and multi-reward).", "method")
    advantages: str = opt("global_std", "global_std: (r − prompt mean) / (std of the batch + 1e-4) (DiffusionNFT's "
                                        "tracker); group: the group's own std.", "method")
    adv_clip_max: float = opt(5.0, "Advantages clipped to ±A_max, then r = A / (2·A_max) + 1/2.", "method")
    kl_beta: float = opt(1e-4, "Weight of ‖f_θ − f_ref‖² to the reference (LoRA off); 0 skips its forward.", "method")
    timestep_fraction: float = opt(0.99, "Each sample trains at int(fraction·S) of the chain's S steps, drawn at "
                                         "random (DiffusionNFT: 0.99).", "method")
    loss_weighting: Optional[str] = opt(None, "adaptive: squared x̂0 error over its detached mean absolute error "
                                              "(DiffusionNFT's code, for flow models); model: squared error of the "
                                              "model output (the paper's eq.); None: adaptive for flow, model for "
                                              "diffusion (see steer.finetune.nft).", "method")
    old_decay_flat: int = opt(0, "Sampling policy v_old ← d·v_old + (1−d)·v_θ after step k with d = 0 for "
                                 "k < flat, else min((k − flat)·rate, max) (DiffusionNFT decay_type 1: 0).", "method")
    old_decay_rate: float = opt(0.001, "rate of the v_old schedule (decay_type 1: 0.001).", "method")
    old_decay_max: float = opt(0.5, "max of the v_old schedule (decay_type 1: 0.5).", "method")
    noise_level: float = opt(0.0, "Sampling kernel noise (DDIM η / flow-SDE a); 0 = the ODE (DiffusionNFT).", "method")
    steer_method: Optional[str] = opt(None, "Draw the samples with this steering method from v_old (fk, "
                                            "best_of_n, ...) instead of the plain chain.", "method")
    steer_options: dict = opt({}, "Options of steer_method (e.g. particles=8).", "method")
    guided: bool = opt(False, "Train the guided prediction (CFG at the process' guidance_scale) instead of the "
                              "conditional branch (DiffusionNFT is CFG-free: samples and trains at guidance 1).",
                       "method")
    train_batch_size: int = opt(8, "Samples per forward of the loss.", "method")
    learning_rate: float = opt(3e-4, "AdamW learning rate (DiffusionNFT: 3e-4).", "optimization")

    def __post_init__(self):
        super().__post_init__()
        _require(self.advantages in ("global_std", "group"),
                 f"advantages must be 'global_std' or 'group', got {self.advantages!r}")
        _require(self.group_size >= 2, f"group_size must be >= 2 (advantages are relative to the group), "
                                       f"got {self.group_size}")
        _require(0 < self.beta <= 1, f"beta must be in (0, 1], got {self.beta}")
        _require(self.adv_clip_max > 0, f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        _require(self.kl_beta >= 0, f"kl_beta must be >= 0, got {self.kl_beta}")
        _require(0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        _require(self.loss_weighting in (None, "adaptive", "model"),
                 f"loss_weighting must be 'adaptive' or 'model', got {self.loss_weighting!r}")
        _require(self.old_decay_flat >= 0 and self.old_decay_rate >= 0 and 0 <= self.old_decay_max < 1,
                 "old_decay_flat and old_decay_rate must be >= 0 and old_decay_max in [0, 1)")
        _require(self.noise_level >= 0, f"noise_level must be >= 0, got {self.noise_level}")
        _require(self.train_batch_size >= 1, f"train_batch_size must be >= 1, got {self.train_batch_size}")

    method = "nft"

@dataclass
class TrajectoryPreferenceConfig(TrainConfig):
    """What D3PO and PRDP share: trajectories of the current model on the stochastic kernel, their
    per-step log-probs, and which steps train."""

    beta: float = opt(0.1, "β scaling the log-probability ratios (D3PO: 0.1).", "method")
    clip_range: float = opt(0.1, "ε: the probability ratio is clipped to [1 − ε, 1 + ε] (D3PO: 0.1).", "method")
    noise_level: Optional[float] = opt(None, "Kernel noise: DDIM η (default 1.0) or flow-SDE a (default 0.7).",
                                       "method")
    timestep_fraction: float = opt(1.0, "Fraction of the chain's stochastic steps trained on per batch.", "method")
    timestep_selection: str = opt("random", "Which steps train: random (a random subset) or first (in order).",
                                  "method")

    def __post_init__(self):
        super().__post_init__()
        _require(math.isfinite(self.beta) and self.beta > 0, f"beta must be a positive number, got {self.beta}")
        _require(0 < self.clip_range < 1, f"clip_range must be in (0, 1), got {self.clip_range}")
        _require(self.noise_level is None or self.noise_level > 0,
                 f"noise_level must be > 0 (log-probs need a stochastic kernel), got {self.noise_level}")
        _require(0 < self.timestep_fraction <= 1, f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        _require(self.timestep_selection in ("random", "first"),
                 f"timestep_selection must be 'random' or 'first', got {self.timestep_selection!r}")

@dataclass
class D3POConfig(TrajectoryPreferenceConfig):
    """D3PO: DPO on pairs of the current model's denoising trajectories (see ``steer.finetune.d3po``)."""

    learning_rate: float = opt(3e-5, "AdamW learning rate (D3PO: 3e-5).", "optimization")

    method = "d3po"

@dataclass
class PRDPConfig(TrajectoryPreferenceConfig):
    """PRDP: regression of reward differences by trajectory log-ratios (see ``steer.finetune.prdp``)."""

    group_size: int = opt(8, "K: samples per prompt; every pair of a group is a regression example (PRDP: 8 at "
                             "large scale, 16 at small).", "method")
    beta: float = opt(10.0, "β of the KL to the reference: the log-ratio difference regresses Δr / β (PRDP: 10).",
                      "method")
    clip_range: float = opt(1e-4, "ε: proximal clip of the ratio to the sampling policy, [1 − ε, 1 + ε].", "method")
    inner_epochs: int = opt(1, "Optimizer steps on each batch of samples (the first has ratio 1).", "method")
    log_prob_reduce: str = opt("sum", "Log-probs of a step summed over dimensions (sum: the trajectory density of "
                                      "the derivation) or averaged (mean: DDPO's convention).", "method")

    def __post_init__(self):
        super().__post_init__()
        _require(self.group_size >= 2, f"group_size must be >= 2 (pairs within a group), got {self.group_size}")
        _require(self.inner_epochs >= 1, f"inner_epochs must be >= 1, got {self.inner_epochs}")
        _require(self.log_prob_reduce in ("sum", "mean"),
                 f"log_prob_reduce must be 'sum' or 'mean', got {self.log_prob_reduce!r}")

    method = "prdp"

@dataclass
class SPOConfig(TrainConfig):
    """SPO: step-aware preference optimization (see ``steer.finetune.spo``)."""

    samples_per_step: int = opt(4, "k: candidates x_{t-1} drawn from each x_t at a trained step (SPO SD-1.5 "
                                   "config: num_sample_each_step 4).", "method")
    beta: float = opt(10.0, "β of the step-wise DPO loss (SPO: train.beta 10).", "method")
    clip_range: float = opt(0.1, "ε: each log-ratio's π_θ/π_ref clamped to [1 − ε, 1 + ε] (SPO: train.eps 0.1).",
                            "method")
    threshold: float = opt(0.3, "A pair is kept when softmax(r_best, r_worst) differs by more than this (SPO: "
                                "0.3 for SD-1.5, 0.4 for SDXL; scale-dependent: set it for your reward).", "method")
    start_step: int = opt(4, "The first step that branches and trains; earlier steps are sampled once (SPO: "
                             "divert_start_step 4 of 20).", "method")
    noise_level: Optional[float] = opt(None, "Kernel noise (DDIM η / flow-SDE a); None = η 1 (SPO) or a 0.7.",
                                       "method")
    guided: bool = opt(True, "Sample and train the guided prediction (CFG at the process' guidance_scale, "
                             "SPO: train.cfg True); False = the conditional branch for both.", "method")
    train_batch_size: int = opt(10, "Pairs per micro-batch (SPO: train.train_batch_size 10).", "method")
    learning_rate: float = opt(6e-5, "AdamW learning rate (SPO: 6e-5).", "optimization")

    def __post_init__(self):
        super().__post_init__()
        _require(isinstance(self.samples_per_step, int) and self.samples_per_step >= 2,
                 f"samples_per_step must be an integer >= 2 (a best and a worst candidate), got {self.samples_per_step}")
        _require(math.isfinite(self.beta) and self.beta > 0, f"beta must be a positive number, got {self.beta}")
        _require(0 < self.clip_range < 1, f"clip_range must be in (0, 1), got {self.clip_range}")
        _require(0 <= self.threshold < 1, f"threshold must be in [0, 1) (a softmax gap), got {self.threshold}")
        _require(isinstance(self.start_step, int) and self.start_step >= 0,
                 f"start_step must be an integer >= 0, got {self.start_step!r}")
        _require(self.noise_level is None or self.noise_level > 0,
                 f"noise_level must be > 0 (SPO's candidates need a stochastic kernel), got {self.noise_level}")
        _require(self.train_batch_size >= 1, f"train_batch_size must be >= 1, got {self.train_batch_size}")

    method = "spo"
