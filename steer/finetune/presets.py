"""Fine-tuning presets: the reference implementations' defaults, selectable by name
(``steer finetune --preset ddpo``, ``presets.config("ddpo")``).

A preset sets a method's config fields and the chain's steps and guidance; anything given explicitly
(flags, ``--set``, ``--steps``, ``--guidance``) overrides it. Every value's origin is in ``origin``
(file and key of the reference); what the preset cannot reproduce is in ``deviations``. Runtime
choices (mixed precision, batch layout over GPUs, checkpoint cadence) are left to the user.

- ``ddpo``: kvablack/ddpo-pytorch ``config/base.py`` (+ ``config/dgx.py`` for the per-GPU batch),
  ``scripts/train.py``, ``ddpo_pytorch/stat_tracking.py``.
- ``flow_grpo``: yifan123/flow_grpo ``config/grpo.py`` (``geneval_sd3``: the GenEval setting) on
  ``config/base.py``, ``scripts/train_sd3.py``, ``flow_grpo/stat_tracking.py``.
- ``alignprop``: mihirp1998/AlignProp at its current (TRL-based) ``config/alignprop_config.py`` and
  ``sd_pipeline.py``; the TRL pipeline's LoRA (r = 4, α = 4).
- ``diffusion_dpo``: SalesforceAIResearch/DiffusionDPO ``launchers/sd15.sh`` and ``train.py``.
- ``diffusion_kto``: jacklishufan/diffusion-kto ``exps/example.sh`` and ``train_kto_sd_v1.5.py``.
- ``diffusion_nft``: NVlabs/DiffusionNFT ``config/nft.py`` (``sd3_*``) on ``config/base.py``,
  ``scripts/train_nft_sd3.py``.
- the preference variants (``mapo``, ``d3po``, ``prdp``, ``spo``, ``inpo``): ``steer.finetune.presets_preference``.
- the 2026 GRPO variants (``flow_grpo_fast``, ``mix_grpo``, ``dance_grpo``, ``sage_grpo``,
  ``grpo_guard``): ``steer.finetune.presets_grpo``.
- ``draft_k`` / ``draft_lv``: DRaFT (Clark et al. 2024) has no official code; the values are the
  paper's small-scale setting as third-party reimplementations report it — not verified against the
  paper's appendix here (stated in ``origin``).
"""
from __future__ import annotations

from steer.errors import SteerError, suggest
from steer.finetune.preset import Preset
from steer.finetune.presets_grpo import GRPO_VARIANTS
from steer.finetune.presets_preference import PREFERENCE_VARIANTS


_DDPO = "ddpo-pytorch config/base.py"
_FG = "flow_grpo config/grpo.py geneval_sd3"
_FGB = "flow_grpo config/base.py"
_AP = "AlignProp config/alignprop_config.py"
_DRAFT = "DRaFT paper small-scale setting, as reimplementations report it (unverified)"
_DPO = "DiffusionDPO launchers/sd15.sh"
_KTO = "diffusion-kto exps/example.sh"
_NFT = "DiffusionNFT config/nft.py"
_NFTB = "DiffusionNFT config/base.py"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("ddpo", "grpo",
           config=dict(noise_level=1.0, learning_rate=3e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4,
                       adam_epsilon=1e-8, max_grad_norm=1.0, inner_epochs=1, adv_clip_max=5.0, clip_range=1e-4,
                       timestep_fraction=1.0, timestep_selection="random", advantages="per_prompt",
                       stat_buffer_size=16, stat_min_count=16, kl_beta=0.0, detach_uncond=False, lora_rank=4,
                       lora_alpha=4.0, group_size=1, prompts_per_step=8),
           process=dict(num_inference_steps=50, guidance_scale=5.0),
           origin={"noise_level": f"{_DDPO} sample.eta", "learning_rate": f"{_DDPO} train.learning_rate",
                   "adam_*": f"{_DDPO} train.adam_*", "max_grad_norm": f"{_DDPO} train.max_grad_norm",
                   "inner_epochs": f"{_DDPO} train.num_inner_epochs", "adv_clip_max": f"{_DDPO} train.adv_clip_max",
                   "clip_range": f"{_DDPO} train.clip_range", "timestep_fraction": f"{_DDPO} train.timestep_fraction",
                   "timestep_selection": "ddpo-pytorch scripts/train.py: a random permutation of the steps",
                   "advantages / group_size": "ddpo-pytorch stat_tracking.py PerPromptStatTracker (no groups)",
                   "stat_buffer_size / stat_min_count": f"{_DDPO} per_prompt_stat_tracking", "kl_beta": "DDPO has no KL",
                   "detach_uncond": "ddpo-pytorch scripts/train.py: one CFG forward, both branches with gradients",
                   "lora_rank / lora_alpha": "diffusers 0.17 LoRAAttnProcessor default rank 4, scale 1",
                   "prompts_per_step": "ddpo-pytorch config/dgx.py sample.batch_size = 8",
                   "num_inference_steps": f"{_DDPO} sample.num_steps", "guidance_scale": f"{_DDPO} sample.guidance_scale"},
           deviations=("DDPO draws prompts independently (no groups): group_size = 1, and the per-prompt tracker "
                       "supplies the baseline",
                       "one sampling batch per optimizer step (DDPO: num_batches_per_epoch batches, then "
                       "train.batch_size-sized updates)",
                       "the trained timesteps are one random subset per batch (DDPO: a permutation per sample); "
                       "with timestep_fraction = 1 they are all steps either way",
                       "the tracker's batch fallback uses this process' batch (DDPO gathers all GPUs)")),
    Preset("flow_grpo", "grpo",
           config=dict(noise_level=0.7, learning_rate=3e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4,
                       adam_epsilon=1e-8, max_grad_norm=1.0, adv_clip_max=5.0, clip_range=1e-4, timestep_fraction=0.99,
                       timestep_selection="first", advantages="global_std", kl_beta=0.04, kl_scaling="flow_grpo",
                       detach_uncond=True, group_size=24, prompts_per_step=1, lora_rank=32, lora_alpha=64.0,
                       target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                       "add_v_proj", "to_add_out"),
                       ema_decay=0.9, inner_epochs=1),
           process=dict(num_inference_steps=10, guidance_scale=4.5),
           origin={"noise_level": f"{_FGB} sample.noise_level", "learning_rate": f"{_FGB} train.learning_rate",
                   "adam_*": f"{_FGB} train.adam_*", "max_grad_norm": f"{_FGB} train.max_grad_norm",
                   "inner_epochs": f"{_FGB} train.num_inner_epochs",
                   "prompts_per_step": "one prompt's group per step (see deviations)",
                   "clip_range / adv_clip_max": f"{_FGB} train.clip_range / adv_clip_max",
                   "timestep_fraction": f"{_FG} train.timestep_fraction",
                   "timestep_selection": "flow_grpo scripts/train_sd3.py: range(int(num_steps·fraction))",
                   "advantages": f"{_FG} sample.global_std = True; flow_grpo stat_tracking.py",
                   "kl_beta": f"{_FG} train.beta", "kl_scaling": "flow_grpo scripts/train_sd3.py: / (2·std_dev_t²)",
                   "detach_uncond": "flow_grpo scripts/train_sd3.py compute_log_prob (noise_pred_uncond.detach(), "
                                    "since 2025-07; some versions keep its gradient)",
                   "group_size": f"{_FG} sample.num_image_per_prompt",
                   "lora_rank / lora_alpha / target_modules": "flow_grpo scripts/train_sd3.py LoraConfig",
                   "ema_decay": "flow_grpo scripts/train_sd3.py EMAModuleWrapper(decay=0.9)",
                   "num_inference_steps": f"{_FG} sample.num_steps", "guidance_scale": f"{_FG} sample.guidance_scale"},
           deviations=("Flow-GRPO's EMA updates every 8 steps; here every step",
                       "Flow-GRPO masks samples whose advantage is zero at every step; here they add nothing to the "
                       "loss anyway (zero advantage), but count in its mean",
                       "the global std is over this process' batch (Flow-GRPO gathers 32 GPUs' rewards)",
                       "one prompt × 24 samples per optimizer step (Flow-GRPO: 12 prompts per batch over 32 GPUs, "
                       "gradient accumulation 2)",
                       "eval_num_steps = 40 is an evaluation setting: evaluate the LoRA with --steps 40")),
    Preset("alignprop", "draft",
           config=dict(variant="alignprop", truncation="gaussian", truncation_mean=0.84, truncation_std=0.1,
                       noise_level=1.0, learning_rate=1e-3, adam_weight_decay=1e-4, max_grad_norm=1.0, lora_rank=4,
                       lora_alpha=4.0, gradient_checkpointing=True),
           process=dict(num_inference_steps=50, guidance_scale=5.0),
           origin={"variant": "AlignProp: randomized truncated backprop",
                   "truncation / truncation_mean / truncation_std": f"{_AP} backprop_strategy = gaussian, kwargs "
                                                                    f"mean 42 std 5 (of 50 steps)",
                   "noise_level": f"{_AP} sample_eta", "learning_rate": f"{_AP} train_learning_rate",
                   "adam_weight_decay / max_grad_norm": f"{_AP} train_adam_weight_decay / train_max_grad_norm",
                   "lora_rank / lora_alpha": "trl DefaultDDPOStableDiffusionPipeline LoraConfig (r = 4, α = 4)",
                   "gradient_checkpointing": "AlignProp sd_pipeline.py (on by default)",
                   "num_inference_steps": f"{_AP} sample_num_steps", "guidance_scale": f"{_AP} sample_guidance_scale"},
           deviations=("the loss is −mean reward; AlignProp's aesthetic loss is |r − 10| × 0.01 (a scale Adam "
                       "mostly ignores, and the target 10 is never reached)",
                       "batch 128 over 4 GPUs × 8 × accumulation 4 is left to prompts_per_step / "
                       "gradient_accumulation_steps")),
    Preset("draft_k", "draft",
           config=dict(variant="draft", k=1, noise_level=0.0, learning_rate=4e-4, adam_weight_decay=0.1, lora_rank=8,
                       prompts_per_step=4),
           process=dict(num_inference_steps=50, guidance_scale=7.5),
           origin={"variant / k": "DRaFT §4: DRaFT-K, K = 1", "noise_level": "DRaFT: DDIM sampling (η = 0 here; η unverified)",
                   "learning_rate / adam_weight_decay / lora_rank / prompts_per_step": _DRAFT,
                   "num_inference_steps / guidance_scale": _DRAFT},
           deviations=("no official code exists; the optimizer and LoRA values are not verified against the "
                       "paper's appendix", "gradient clipping: DRaFT's value is unknown; steer's 1.0 is kept")),
    Preset("draft_lv", "draft",
           config=dict(variant="lv", lv_copies=2, noise_level=0.0, learning_rate=4e-4, adam_weight_decay=0.1,
                       lora_rank=8, prompts_per_step=4),
           process=dict(num_inference_steps=50, guidance_scale=7.5),
           origin={"variant / lv_copies": "DRaFT §4.2: DRaFT-LV, n = 2",
                   "noise_level": "DRaFT: DDIM sampling (η = 0 here; η unverified)",
                   "learning_rate / adam_weight_decay / lora_rank / prompts_per_step": _DRAFT,
                   "num_inference_steps / guidance_scale": _DRAFT},
           deviations=("no official code exists; the optimizer and LoRA values are not verified against the "
                       "paper's appendix", "gradient clipping: DRaFT's value is unknown; steer's 1.0 is kept")),
    Preset("diffusion_dpo", "dpo",
           config=dict(beta=5000.0, learning_rate=2.048e-5, lr_warmup_steps=500, max_steps=2000,
                       train_batch_size=1, gradient_accumulation_steps=128, adam_beta1=0.9, adam_beta2=0.999,
                       adam_weight_decay=1e-2, adam_epsilon=1e-8, max_grad_norm=1.0, loss_space="model"),
           process=dict(num_inference_steps=50, guidance_scale=7.5),
           origin={"beta": f"{_DPO} --beta_dpo 5000", "learning_rate": f"{_DPO} --learning_rate 1e-8 --scale_lr: "
                                                                     f"1e-8 × the effective batch 2048",
                   "lr_warmup_steps / max_steps": f"{_DPO} --lr_warmup_steps 500 --max_train_steps 2000",
                   "train_batch_size / gradient_accumulation_steps": f"{_DPO} --train_batch_size 1 "
                                                                     f"--gradient_accumulation_steps 128 (per GPU)",
                   "adam_*": "DiffusionDPO train.py argparse defaults (weight decay 1e-2)",
                   "max_grad_norm": "DiffusionDPO train.py --max_grad_norm 1.0",
                   "loss_space": "DiffusionDPO train.py: the ε-prediction MSE",
                   "num_inference_steps / guidance_scale": "diffusers StableDiffusionPipeline defaults (the "
                                                          "reference evaluates with them)"},
           deviations=("the reference fine-tunes the full UNet; this preset trains a LoRA (steer's "
                       "fine-tuning is LoRA-only), so its learning rate is likely too small for a LoRA",
                       "2048 pairs per step = 16 GPUs × 128 accumulation; here gradient_accumulation_steps = 128 "
                       "on each process: launch 16 processes for the paper's batch",
                       "t is one of the chain's sampling steps, shared by the micro-batch (the reference: one of "
                       "1000 per pair)", "no random horizontal flip of dataset images")),
    Preset("diffusion_kto", "kto",
           config=dict(beta=1000.0, learning_rate=1e-7, lr_warmup_steps=200, max_steps=20000, train_batch_size=2,
                       lambda_desirable=1.0, lambda_undesirable=1.0, desirable_fraction=0.8, lora_rank=8, adam_weight_decay=1e-2,
                       lora_alpha=8.0, max_grad_norm=1.0, loss_space="model"),
           process=dict(num_inference_steps=50, guidance_scale=7.5),
           origin={"beta": "diffusion-kto train_kto_sd_v1.5.py --beta_dpo default 1000 (example.sh keeps it)",
                   "learning_rate / lr_warmup_steps / max_steps": f"{_KTO} --learning_rate 1e-07 "
                                                                  f"--lr_warmup_steps 200 --max_train_steps 20000",
                   "train_batch_size": f"{_KTO} --train_batch_size 2 (per GPU, 4 GPUs)",
                   "lambda_desirable / lambda_undesirable": "train_kto_sd_v1.5.py --lambda_d_kto / --lambda_u_kto 1",
                   "desirable_fraction": f"{_KTO} --positive_ratio 0.8",
                   "lora_rank / lora_alpha": f"{_KTO} --rank 8", "max_grad_norm / adam_weight_decay": "train_kto_sd_v1.5.py defaults 1.0 / 1e-2",
                   "loss_space": "train_kto_sd_v1.5.py: the ε-prediction MSE",
                   "num_inference_steps / guidance_scale": "diffusers StableDiffusionPipeline defaults"},
           deviations=("example.sh passes --rank 8 without --use_lora, i.e. it trains the full UNet at 1e-7; "
                       "here a rank-8 LoRA, for which 1e-7 is likely too small",
                       "the KL reference point is averaged over this run's processes (the reference: over its "
                       "GPUs, the same rule)", "t is one of the chain's sampling steps, shared by the micro-batch")),
    Preset("diffusion_nft", "nft",
           config=dict(beta=1.0, adv_clip_max=5.0, advantages="global_std", kl_beta=1e-4, timestep_fraction=0.99,
                       loss_weighting="adaptive", old_decay_flat=0, old_decay_rate=0.001, old_decay_max=0.5,
                       noise_level=0.0, guided=False, group_size=24, prompts_per_step=1, learning_rate=3e-4,
                       adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4, adam_epsilon=1e-8,
                       max_grad_norm=1.0, ema_decay=0.9, lora_rank=32, lora_alpha=64.0,
                       target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                       "add_v_proj", "to_add_out")),
           process=dict(num_inference_steps=10, guidance_scale=1.0),
           origin={"beta": f"{_NFT} _get_config: config.beta = 1.0 (sd3_ocr / sd3_multi_reward: 0.1)",
                   "adv_clip_max": f"{_NFTB} train.adv_clip_max = 5",
                   "advantages": f"{_NFTB} per_prompt_stat_tracking + sample.global_std (tracker cleared each epoch)",
                   "kl_beta": f"{_NFT} train.beta = 0.0001",
                   "timestep_fraction": f"{_NFTB} train.timestep_fraction = 0.99",
                   "loss_weighting": "DiffusionNFT scripts/train_nft_sd3.py: x0-space loss / mean|x0 error|",
                   "old_decay_flat / old_decay_rate / old_decay_max": f"{_NFT} decay_type = 1 (return_decay: flat 0, uprate 0.001, uphold 0.5)",
                   "noise_level": f"{_NFT} sample.deterministic = True (solver dpm2)",
                   "guided": f"{_NFT} sample.guidance_scale = 1.0 (CFG-free)",
                   "group_size": f"{_NFT} sample.num_image_per_prompt = 24",
                   "prompts_per_step": "one prompt's group per step (see deviations)",
                   "learning_rate / adam_* / max_grad_norm": f"{_NFTB} train.*",
                   "ema_decay": "DiffusionNFT scripts/train_nft_sd3.py EMAModuleWrapper(decay=0.9)",
                   "lora_rank / lora_alpha / target_modules": "DiffusionNFT scripts/train_nft_sd3.py LoraConfig "
                                                              "(r = 32, α = 64, SD3 attention projections)",
                   "num_inference_steps": f"{_NFT} sample.num_steps = 10 (eval_num_steps 40)",
                   "guidance_scale": f"{_NFT} sample.guidance_scale = 1.0"},
           deviations=("one prompt × 24 samples per optimizer step (the reference: 48 groups of 24 per epoch, "
                       "one optimizer step per epoch over 8 GPUs)",
                       "steer's first-order ODE (DDIM η = 0 / Euler) samples instead of the reference's 2nd-order "
                       "DPM solver", "the trained steps are shared by a micro-batch (the reference: a "
                       "permutation per sample)", "the advantages' statistics are this process' batch",
                       "eval_num_steps = 40 is an evaluation setting: evaluate the LoRA with --steps 40")),
)}
PRESETS.update({p.name: p for p in GRPO_VARIANTS + PREFERENCE_VARIANTS})

def get(name: str, method: str | None = None) -> Preset:
    """The preset ``name``; when ``method`` is given it must be the preset's method."""
    if name not in PRESETS:
        raise SteerError(f"unknown preset {name!r}{suggest(name, PRESETS)}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if method is not None and method != preset.method:
        raise SteerError(f"preset {name!r} is for --method {preset.method}, not {method}; pass --method "
                         f"{preset.method} (or no --method)")
    return preset


def config(name: str, **overrides):
    """The method config of preset ``name`` with ``overrides`` on top (``preset`` recorded in it)."""
    from steer.finetune.config import CONFIGS

    preset = get(name)
    return CONFIGS[preset.method](**{**preset.config, **overrides, "preset": name})
