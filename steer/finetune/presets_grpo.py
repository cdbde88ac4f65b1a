"""Presets of the 2026 GRPO variants (``steer.finetune.grpo_variants``), merged into
``steer.finetune.presets.PRESETS``; each value's source is in ``origin``, what is not reproduced in
``deviations``.

- ``flow_grpo_fast``: yifan123/flow_grpo ``config/grpo.py`` ``geneval_sd3_fast_nocfg``, ``scripts/train_sd3_fast.py``.
- ``mix_grpo``: Tencent-Hunyuan/MixGRPO ``scripts/finetune/finetune_flux_grpo_MixGRPO.sh``,
  ``fastvideo/train_grpo_flux.py``, ``fastvideo/utils/grpo_states.py``.
- ``dance_grpo``: XueZeyue/DanceGRPO ``scripts/finetune/finetune_flux_grpo_8gpus_lora.sh``,
  ``fastvideo/train_grpo_flux_lora.py``.
- ``sage_grpo``: Tencent-Hunyuan/SAGE-GRPO ``post_train.py`` (argument defaults), ``README.md``,
  ``hyvideo/utils/grpo_utils.py`` — its micro-level parts only (see ``steer.finetune.grpo_variants``).
- ``grpo_guard``: X-GenGroup/Flow-Factory ``examples/grpo/lora/sd3_5/default.yaml`` with
  ``trainer_type: grpo-guard`` (``trainers/grpo.py`` ``GRPOGuardTrainer``).
"""
from __future__ import annotations

from steer.finetune.preset import Preset

_FGB = "flow_grpo config/base.py"
_FAST = "flow_grpo config/grpo.py geneval_sd3_fast_nocfg"
_MIX = "MixGRPO scripts/finetune/finetune_flux_grpo_MixGRPO.sh"
_DANCE = "DanceGRPO scripts/finetune/finetune_flux_grpo_8gpus_lora.sh"
_FF = "Flow-Factory examples/grpo/lora/sd3_5/default.yaml"
_SAGE = "SAGE-GRPO post_train.py defaults"
_SD3_ATTN = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

GRPO_VARIANTS = (
    Preset("flow_grpo_fast", "grpo",
           config=dict(noise_level=0.8, sde_type="cps", sde_window_size=3, sde_window_range=(0, 5),
                       sde_window_schedule="random", clip_range=1e-5, kl_beta=0.0, advantages="global_std",
                       adv_clip_max=5.0, learning_rate=3e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4,
                       adam_epsilon=1e-8, max_grad_norm=1.0, inner_epochs=1, group_size=24, prompts_per_step=1,
                       lora_rank=32, lora_alpha=64.0, target_modules=_SD3_ATTN, ema_decay=0.9),
           process=dict(num_inference_steps=10, guidance_scale=1.0),
           origin={"noise_level": f"{_FAST} sample.noise_level = 0.8", "sde_type": f"{_FAST} sample.sde_type = 'cps'",
                   "sde_window_size": f"{_FAST} sample.sde_window_size = 3",
                   "sde_window_range": f"{_FAST} sample.sde_window_range = (0, num_steps // 2)",
                   "sde_window_schedule": "flow_grpo sd3_pipeline_with_logprob_fast: random.randint(lo, hi - size)",
                   "clip_range": f"{_FAST} train.clip_range = 1e-5", "kl_beta": f"{_FAST} train.beta = 0",
                   "advantages": f"{_FAST} sample.global_std = True", "adv_clip_max": f"{_FGB} train.adv_clip_max",
                   "learning_rate": f"{_FGB} train.learning_rate", "adam_*": f"{_FGB} train.adam_*",
                   "max_grad_norm": f"{_FGB} train.max_grad_norm", "inner_epochs": f"{_FAST} train.num_inner_epochs",
                   "group_size": f"{_FAST} sample.num_image_per_prompt = 24",
                   "prompts_per_step": "one prompt's group per step (see deviations)",
                   "lora_rank / lora_alpha / target_modules": "flow_grpo scripts/train_sd3_fast.py LoraConfig",
                   "ema_decay": "flow_grpo scripts/train_sd3_fast.py EMAModuleWrapper(decay=0.9)",
                   "num_inference_steps": f"{_FAST} sample.num_steps = 10",
                   "guidance_scale": f"{_FAST} sample.guidance_scale = 1 (train.cfg = False)"},
           deviations=("the window is drawn from the run's generator, one per micro-batch (flow_grpo: Python's random "
                       "seeded with the process index, one per sampling call)",
                       "sde_window_range is fixed at (0, 5), i.e. num_steps // 2 of the preset's 10 steps: with "
                       "--steps N set it to (0, N // 2) yourself",
                       "Flow-GRPO's EMA updates every 8 steps; here every step",
                       "one prompt × 24 samples per optimizer step (flow_grpo: 48 prompts per epoch over 32 GPUs)")),
    Preset("mix_grpo", "grpo",
           config=dict(noise_level=0.7, sde_type="sde", sde_window_size=4, sde_window_schedule="progressive",
                       window_shift_every=25, window_stride=1, shared_noise=True, group_size=12, prompts_per_step=1,
                       advantages="group_unbiased", multi_reward="advantages", adv_clip_max=5.0, clip_range=1e-4,
                       kl_beta=0.0, learning_rate=1e-5, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4,
                       adam_epsilon=1e-8, max_grad_norm=1.0, detach_uncond=False),
           process=dict(num_inference_steps=25, guidance_scale=3.5),
           origin={"noise_level": f"{_MIX} eta=0.7", "sde_type": f"{_MIX} --flow_grpo_sampling (flow_grpo_step)",
                   "sde_window_size": f"{_MIX} group_size=4 (timesteps per window)",
                   "sde_window_schedule": f"{_MIX} sample_strategy=progressive --roll_back (grpo_states.py)",
                   "window_shift_every": f"{_MIX} iters_per_group=25",
                   "window_stride": f"{_MIX} --prog_overlap --prog_overlap_step 1",
                   "shared_noise": f"{_MIX} --init_same_noise", "group_size": f"{_MIX} --num_generations 12",
                   "prompts_per_step": f"{_MIX} --train_batch_size 1",
                   "advantages": "MixGRPO train_grpo_flux.py: (r - mean) / (torch std + 1e-8) per group (--use_group)",
                   "multi_reward": f"{_MIX} multi_reward_mix=advantage_aggr",
                   "adv_clip_max / clip_range": f"{_MIX} --adv_clip_max 5.0 --clip_range 1e-4",
                   "kl_beta": f"{_MIX} kl_coeff=0.0", "learning_rate": f"{_MIX} --learning_rate 1e-5",
                   "adam_*": "MixGRPO train_grpo_flux.py AdamW(betas=(0.9, 0.999), eps=1e-8), --weight_decay 0.0001",
                   "max_grad_norm": f"{_MIX} --max_grad_norm 1.0", "detach_uncond": f"{_MIX} --cfg 0.0 (no CFG branch)",
                   "num_inference_steps": f"{_MIX} sampling_steps=25",
                   "guidance_scale": "MixGRPO train_grpo_flux.py: FLUX's distilled guidance=3.5 (no CFG)"},
           deviations=("MixGRPO fine-tunes the whole FLUX transformer; here a LoRA (steer's default rank)",
                       "the window's start S - 2, where the reference's window is empty (nothing trains for those "
                       "25 steps), is skipped",
                       "one optimizer step per micro-batch of 12 samples (MixGRPO: a step every 3 samples, "
                       "gradient_accumulation_steps=3)", "the schedule is the pipeline's own (MixGRPO: shift 3 "
                       "on linspace(1, 0))", "the ODE outside the window is Euler (MixGRPO-Flash's DPM-Solver++ "
                       "is not reproduced)", "the advantages' statistics are this process' batch")),
    Preset("dance_grpo", "grpo",
           config=dict(noise_level=0.3, sde_type="dance", shared_noise=True, timestep_fraction=0.6,
                       timestep_selection="random_but_last", group_size=12, prompts_per_step=2,
                       advantages="group_unbiased", adv_clip_max=5.0, clip_range=1e-4, kl_beta=0.0,
                       learning_rate=3e-4, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4, adam_epsilon=1e-8,
                       max_grad_norm=1.0, lora_rank=128, lora_alpha=256.0,
                       target_modules=("to_k", "to_q", "to_v", "to_out.0"), detach_uncond=False),
           process=dict(num_inference_steps=12, guidance_scale=3.5),
           origin={"noise_level": f"{_DANCE} --eta 0.3", "sde_type": "DanceGRPO train_grpo_flux_lora.py flux_step "
                                                                    "(σ_t = eta, sde_solver=True)",
                   "shared_noise": f"{_DANCE} --init_same_noise", "timestep_fraction": f"{_DANCE} --timestep_fraction 0.6",
                   "timestep_selection": "DanceGRPO train_grpo_flux_lora.py: the last step dropped ([:, :-1]), a "
                                         "random permutation, its first int(fraction·(S-1))",
                   "group_size": f"{_DANCE} --num_generations 12", "prompts_per_step": f"{_DANCE} --train_batch_size 2",
                   "advantages": "DanceGRPO train_grpo_flux_lora.py: (r - mean) / (torch std + 1e-8) (--use_group)",
                   "adv_clip_max / clip_range": f"{_DANCE} --adv_clip_max 5.0 --clip_range 1e-4",
                   "kl_beta": "DanceGRPO has no KL term", "learning_rate": f"{_DANCE} --learning_rate 3e-4",
                   "adam_*": "DanceGRPO AdamW(betas=(0.9, 0.999), eps=1e-8), --weight_decay 0.0001",
                   "max_grad_norm": f"{_DANCE} --max_grad_norm 1.0",
                   "lora_rank / lora_alpha / target_modules": f"{_DANCE} --lora_rank 128 --lora_alpha 256; "
                                                              "LoraConfig(target_modules=[to_k, to_q, to_v, to_out.0])",
                   "detach_uncond": f"{_DANCE} --cfg 0.0 (no CFG branch)",
                   "num_inference_steps": f"{_DANCE} --sampling_steps 12",
                   "guidance_scale": "DanceGRPO train_grpo_flux_lora.py: FLUX's distilled guidance=3.5 (no CFG)"},
           deviations=("the trained steps are one random subset per micro-batch (DanceGRPO: a permutation per sample)",
                       "the shared noise is per prompt's group (DanceGRPO's --init_same_noise draws one noise for the "
                       "GPU's whole batch, i.e. for both of its prompts)",
                       "the chain's last state is decoded (DanceGRPO decodes the last step's x̂0)",
                       "one optimizer step per micro-batch (DanceGRPO: gradient_accumulation_steps 12 over samples)",
                       "the schedule is the pipeline's own (DanceGRPO: shift 3 on linspace(1, 0))")),
    Preset("sage_grpo", "grpo",
           config=dict(sde_type="sage", noise_level=0.5, grad_balance=True, timestep_fraction=1.0,
                       timestep_selection="random", group_size=4, prompts_per_step=1, advantages="group",
                       clip_range=1e-4, adv_clip_max=5.0, kl_beta=0.0, learning_rate=1e-5),
           process=dict(num_inference_steps=20, guidance_scale=6.0),
           origin={"sde_type": f"{_SAGE} sde_type = 'sage_grpo' (sde_solver=True in grpo_one_step)",
                   "noise_level": f"{_SAGE} eta = 0.5", "grad_balance": f"{_SAGE} use_grad_balancing = True",
                   "timestep_fraction": f"{_SAGE} timestep_fraction = 1.0 (every step, the last included)",
                   "timestep_selection": f"{_SAGE} enable_timestep_permutation = True",
                   "group_size": "SAGE-GRPO README: num_generations = 4",
                   "prompts_per_step": "one prompt's group per step (see deviations)",
                   "advantages": "SAGE-GRPO grpo_utils.py _normalize_group (its statistics not read: unverified)",
                   "clip_range / adv_clip_max": f"{_SAGE} clip_range = 1e-4, adv_clip_max = 5.0",
                   "kl_beta": "SAGE-GRPO's dual trust-region KL is not reproduced (see deviations)",
                   "learning_rate": "SAGE-GRPO README: learning_rate 1e-5",
                   "num_inference_steps": f"{_SAGE} grpo_sampling_steps = 20",
                   "guidance_scale": f"{_SAGE} cfg_scale = 6.0"},
           deviations=("the dual trust region (adaptive KL coefficient from 1e-7 up to kl_weight 1e-5, a reference "
                       "re-anchored every 10 updates, a step-wise KL weighted 0.1) is not reproduced: kl_beta = 0",
                       "SAGE-GRPO fine-tunes the whole HunyuanVideo-1.5 transformer; here a LoRA",
                       "the trained steps are shared by a micro-batch (SAGE-GRPO permutes them per sample; with "
                       "timestep_fraction 1 every step trains either way)",
                       "one prompt × 4 samples per optimizer step (SAGE-GRPO: 64 videos over 32 data-parallel "
                       "ranks)", "the group-advantage statistics (_normalize_group in hyvideo/commons) were not "
                       "read; steer's group advantages are used")),
    Preset("grpo_guard", "grpo",
           config=dict(ratio_norm=True, sde_type="sde", noise_level=0.8, sde_window_size=2, sde_window_range=(1, 6),
                       sde_window_schedule="subset", clip_range=1e-4, adv_clip_max=5.0, kl_beta=0.0,
                       advantages="global_std", group_size=24, prompts_per_step=1, learning_rate=3e-4,
                       adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4, adam_epsilon=1e-8, max_grad_norm=1.0,
                       ema_decay=0.99, lora_rank=32, lora_alpha=64.0, target_modules=_SD3_ATTN),
           process=dict(num_inference_steps=10, guidance_scale=4.5),
           origin={"ratio_norm": "Flow-Factory trainers/grpo.py GRPOGuardTrainer (trainer_type: grpo-guard)",
                   "sde_type": f"{_FF} scheduler.dynamics_type = Flow-SDE (required by grpo-guard)",
                   "noise_level": f"{_FF} scheduler.noise_level = 0.8",
                   "sde_window_size": f"{_FF} scheduler.num_sde_steps = 2",
                   "sde_window_range": f"{_FF} scheduler.sde_steps = [1, 2, 3, 4, 5]",
                   "sde_window_schedule": "Flow-Factory scheduler: randperm(sde_steps)[:num_sde_steps]",
                   "clip_range / adv_clip_max": f"{_FF} train.clip_range = 1e-4, adv_clip_range = 5.0",
                   "kl_beta": f"{_FF} train.kl_beta = 0", "advantages": f"{_FF} train.global_std = true",
                   "group_size": f"{_FF} train.group_size = 24", "prompts_per_step": "one prompt's group per step",
                   "learning_rate / adam_* / max_grad_norm": f"{_FF} train.learning_rate, adam_*, max_grad_norm",
                   "ema_decay": f"{_FF} train.ema_decay = 0.99",
                   "lora_rank / lora_alpha / target_modules": f"{_FF} model.lora_rank 32, lora_alpha 64 (SD3.5 attention)",
                   "num_inference_steps": f"{_FF} train.num_inference_steps = 10",
                   "guidance_scale": f"{_FF} train.guidance_scale = 4.5"},
           deviations=("Flow-Factory's EMA updates every 4 epochs; here every step",
                       "one prompt × 24 samples per optimizer step (Flow-Factory: 48 unique prompts per epoch, "
                       "2 gradient steps per epoch over 8 GPUs)",
                       "the stochastic steps are drawn from the run's generator, one set per micro-batch")),
)
