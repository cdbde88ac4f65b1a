"""The 2026 GRPO variants as small functions on the GRPO loop (``steer.finetune.grpo``), selected by
``GRPOConfig`` options and named presets (``steer.finetune.presets``).

- **Flow-GRPO-Fast** (yifan123/flow_grpo ``scripts/train_sd3_fast.py``, ``sd3_pipeline_with_logprob_fast``;
  ``config/grpo.py`` ``*_fast*``): only ``sde_window_size`` = W consecutive steps are stochastic, the rest
  of the chain is the ODE, and only those W steps train. The window start is
  ``random.randint(lo, hi − W)`` (both ends inclusive) over ``sde_window_range`` = (lo, hi), drawn anew for
  every sampling batch (``fast_window``); flow_grpo's fast configs use W = 3 in (0, S // 2) with CPS. Flow-Factory's form of it (``scheduler.num_sde_steps`` of
  ``scheduler.sde_steps``, its SD3.5 example: 2 of steps 1..5) draws the W stochastic steps as a random
  subset, not necessarily adjacent (``sde_window_schedule="subset"``, ``subset_window``).
- **CPS** (coefficients-preserving sampling, flow_grpo ``sde_type="cps"``): ``kernels.flow_cps``; its
  log-prob is flow_grpo's −mean((x_next − μ)²) (``kernels.cps_log_prob``), not a Gaussian density.
- **MixGRPO** (Tencent-Hunyuan/MixGRPO ``fastvideo/train_grpo_flux.py``, ``fastvideo/utils/grpo_states.py``
  ``GRPOTrainingStates``, ``scripts/finetune/finetune_flux_grpo_MixGRPO.sh``): the SDE runs inside a
  window of W = 4 steps and the ODE outside; the window starts at 0 and moves by ``window_stride`` (1)
  every ``window_shift_every`` (25) optimizer steps and rolls back to 0 (``roll_back``) after its last
  start; windows are cut at S − 2 (the reference's ``max_timesteps``), so the last two steps are never
  stochastic (``mix_window``).
- **GRPO-Guard** (Wang et al. 2025, arXiv 2510.22319; as X-GenGroup/Flow-Factory
  ``trainers/grpo.py`` ``GRPOGuardTrainer`` implements it): the log-ratio of a Gaussian step,
  Δlog p = −(‖x′ − μ_θ‖² − ‖x′ − μ_old‖²)/(2s²) (dimension means), has mean −‖Δμ‖²/(2s²) < 0 under the
  old policy and a scale ∝ 1/s that grows at low-noise steps. Guard uses
  log ρ = s·Δlog p + ‖μ_θ − μ_old‖²/(2s) = mean(ε·(μ_θ − μ_old)) with x′ = μ_old + s·ε: centred (ratio
  normalization) and rescaled by the step's std s (per-step gradient reweighting) (``guard_log_ratio``).
  The paper's own code was not found; its separate gradient-reweight forms (δ per σ_t convention) were not
  checked, the combined expression is Flow-Factory's. As there, it needs a Gaussian log-density (not CPS's).
- **DanceGRPO** (XueZeyue/DanceGRPO ``fastvideo/train_grpo_flux.py`` / ``train_grpo_flux_lora.py``,
  ``scripts/finetune/finetune_flux_grpo*.sh``):
  its SDE (``kernels.dance_sde``, σ_t = η = 0.3), one initial noise shared by a prompt's group
  (``--init_same_noise``, ``initial_noise``), the last step never trained and int(0.6·(S − 1)) of the
  others drawn at random (``timestep_selection="random_but_last"``), advantages with the unbiased
  group std + 1e-8 (``advantages="group_unbiased"``).
- **SAGE-GRPO** (Zheng et al. 2026, arXiv 2603.21872; Tencent-Hunyuan/SAGE-GRPO
  ``hyvideo/schedulers/scheduling_flow_match_discrete.py``, ``hyvideo/utils/grpo_utils.py``): its micro-level
  parts, the SDE with the step's integrated variance (``kernels.sage_sde``) and the gradient norm equalizer
  (``grad_balance_scales``: each step's policy loss times median(g)/g_i). Not reproduced: its macro-level
  dual trust region (an adaptive KL coefficient, a reference re-anchored every 10 updates, a step-wise KL
  E_old[log π_old − log π_θ]).
- **Multi-reward GRPO**: see ``steer.finetune.advantages`` (``multi_reward``); ``reward_terms`` splits a
  weighted-sum reward into its terms.

Deviations: the window (Fast, MixGRPO) is shared by the micro-batch and drawn from the run's generator
(flow_grpo seeds Python's ``random`` with the process index); MixGRPO's DPM-Solver ODE ("Flash") outside
the window is not reproduced (steer's ODE is Euler / DDIM η = 0); DanceGRPO draws the trained steps per
sample (a permutation each), here one subset per batch (``Process.predict`` takes one step index);
DanceGRPO decodes the last x̂0 rather than the last SDE state, here the chain's last state is decoded;
MixGRPO's window also starts at S − 2, where it is empty (nothing trains for those steps): steer's
progressive window skips that start.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from steer import kernels


def fast_window(lo: int, hi: int, size: int, generator: torch.Generator) -> list[int]:
    """Flow-GRPO-Fast: steps start .. start + size − 1 with start uniform in lo .. hi − size (inclusive)."""
    start = int(torch.randint(lo, hi - size + 1, (1,), generator=generator))
    return list(range(start, start + size))


def subset_window(lo: int, hi: int, size: int, generator: torch.Generator) -> list[int]:
    """Flow-Factory's ``num_sde_steps`` of ``sde_steps``: ``size`` distinct steps of lo .. hi − 1 drawn
    uniformly (a random permutation's first ones, not necessarily adjacent), sorted."""
    return sorted((lo + torch.randperm(hi - lo, generator=generator)[:size]).tolist())


def mix_window(step: int, size: int, shift_every: int, stride: int, num_steps: int) -> list[int]:
    """MixGRPO's progressive window at optimizer step ``step`` (0-based): its start moves by ``stride``
    every ``shift_every`` steps from 0 and rolls back to 0 before reaching S − 2; the window is
    start .. min(start + size, S − 2) − 1 (``GRPOTrainingStates.get_current_timesteps``)."""
    last = num_steps - 2  # the reference's max_timesteps
    if last < 1:
        raise ValueError(f"MixGRPO's window needs num_inference_steps >= 3, got {num_steps}")
    cycle = (last - 1) // stride + 1  # window starts 0, stride, ..., < last, then roll back
    start = (step // shift_every) % cycle * stride
    return list(range(start, min(start + size, last)))


def sde_window(config, num_steps: int, step: int, generator: torch.Generator) -> Optional[list[int]]:
    """The stochastic (and trained) steps of a batch, or None when every step is stochastic."""
    size = config.sde_window_size
    if size == 0:
        return None
    lo, hi = config.sde_window_range or (0, num_steps)
    if hi > num_steps or size > hi - lo:
        raise ValueError(f"sde_window_range ({lo}, {hi}) with sde_window_size {size} does not fit a chain of "
                         f"{num_steps} steps; lower them or raise num_inference_steps")
    if config.sde_window_schedule == "progressive":
        return mix_window(step, size, config.window_shift_every, config.window_stride, num_steps)
    if config.sde_window_schedule == "subset":
        return subset_window(lo, hi, size, generator)
    return fast_window(lo, hi, size, generator)


def step_noise(window: Optional[list[int]], i: int, level: float) -> float:
    """The kernel noise of step ``i``: ``level`` inside the window (or everywhere without one), else 0 (ODE)."""
    return level if window is None or i in window else 0.0


def kernel(process, i: int, x: Tensor, pred, level: float, sde_type: str) -> kernels.Gaussian:
    """The transition of step ``i`` at noise ``level`` with the config's ``sde_type`` (float32)."""
    return kernels.transition(process.schedule, i, x.float(), pred, level, sde_type=sde_type)


def step_log_prob(g: kernels.Gaussian, x_next: Tensor, sde_type: str) -> Tensor:
    """log p(x_next | x_i) averaged over dimensions (B,); CPS uses flow_grpo's −mean((x_next − μ)²)."""
    if sde_type == "cps":
        return kernels.cps_log_prob(g, x_next)
    return kernels.log_prob(g, x_next, reduce="mean")


def guard_log_ratio(lp_new: Tensor, lp_old: Tensor, mean_new: Tensor, mean_old: Tensor, std: Tensor) -> Tensor:
    """GRPO-Guard's log-ratio (B,): s·(log p_θ − log p_old) + mean((μ_θ − μ_old)²)/(2s), s the step's std."""
    s = std.float()
    mse = ((mean_new.float() - mean_old.float()) ** 2).flatten(1).mean(dim=1)  # (B,)
    return (lp_new - lp_old) * s + mse / (2 * s)


def grad_balance_scales(schedule, level: float, sde_type: str) -> Tensor:
    """SAGE-GRPO's gradient norm equalizer (``compute_grad_balancing_factors``): per step i of the chain
    g_i = |∂mean/∂output| / std (the norm of ∂log p/∂output per unit noise; every kernel's mean is affine in
    the model output), non-finite or non-positive g_i → 1, and scale_i = median_j(g_j) / g_i (S,)."""
    S = len(schedule.timesteps)
    x, ones = torch.zeros(1, 1), torch.ones(1, 1)
    norms = []
    for i in range(S):
        g0 = kernels.transition(schedule, i, x, kernels.to_prediction(schedule, i, x, 0 * ones), level, sde_type)
        g1 = kernels.transition(schedule, i, x, kernels.to_prediction(schedule, i, x, ones), level, sde_type)
        g = float((g1.mean - g0.mean).abs().max()) / max(float(g0.std), 1e-12)
        norms.append(g if math.isfinite(g) and g > 0 else 1.0)
    norms = torch.tensor(norms)
    return norms.median() / norms  # (S,)


def initial_noise(process, num_prompts: int, group_size: int, shared: bool, generator: torch.Generator) -> Tensor:
    """x_T for P prompts × G samples (prompt-major): one draw per sample, or one per prompt repeated G
    times (``shared``: DanceGRPO / MixGRPO ``--init_same_noise``)."""
    if not shared:
        return process.init_noise(num_prompts * group_size, generator)  # (P·G, C, h, w)
    return process.init_noise(num_prompts, generator).repeat_interleave(group_size, dim=0)  # (P·G, C, h, w)


def reward_terms(reward) -> tuple[list, list[float]]:
    """The (rewards, weights) of a weighted-sum reward (``WeightedSum.terms``), for ``multi_reward="advantages"``;
    a single reward is one term of weight 1 (then both modes agree)."""
    terms = getattr(reward, "terms", None) or [(1.0, reward)]  # a single reward is one term of weight 1
    return [r for _, r in terms], [w for w, _ in terms]


def score_terms(process, reward, x: Tensor, prompts: Sequence[str], trace, images: Tensor) -> Tensor:
    """Each term of a weighted-sum reward on the decoded ``images`` (K, B), float32."""
    from steer.scoring import reward_input, score_images

    rewards, _ = reward_terms(reward)
    with torch.no_grad():
        return torch.stack([score_images(r, reward_input(process, r, x, images.to(x.device)), prompts, trace=trace,
                                         method="grpo").float().cpu() for r in rewards])
