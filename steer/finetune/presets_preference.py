"""Presets of the preference variants beside Diffusion-DPO / KTO, merged into ``steer.finetune.presets.PRESETS``;
each value's source is in ``origin``, what is not reproduced in ``deviations``.

- ``mapo``: mapo-t2i/mapo ``README.md`` (the LoRA run), ``args.py``, ``train_with_lora.py``.
- ``d3po``: yk7333/d3po ``config/base.py`` and ``scripts/train_d3po.py``.
- ``prdp``: PRDP (Deng et al. 2024) has no public code: the paper's stated settings, unverified (``origin``).
- ``spo``: RockeyCoss/SPO ``configs/spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10.py`` on
  ``configs/basic_config.py``, ``train_scripts/train_spo.py``.
- ``inpo``: JaydenLyh/InPO ``examples/sd15.sh`` and ``train.py``.
"""
from __future__ import annotations

from steer.finetune.preset import Preset

_SPO = "SPO configs/basic_config.py"
_INPO = "InPO examples/sd15.sh"
_MAPO, _D3PO = "mapo README.md LoRA command", "d3po config/base.py"
_PRDP = "PRDP paper §5 as summarized (no public code; the full text was not read)"

PREFERENCE_VARIANTS = (

    Preset("mapo", "mapo",
           config=dict(beta=0.1, snr_value=0.5, learning_rate=1e-5, lr_warmup_steps=0, max_steps=2000,
                       train_batch_size=8, gradient_accumulation_steps=2, lora_rank=8, lora_alpha=8.0,
                       adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-2, adam_epsilon=1e-8,
                       max_grad_norm=1.0, loss_space="model", guided=False),
           process=dict(num_inference_steps=25, guidance_scale=5.0),
           origin={"beta / snr_value": "mapo args.py --beta_mapo 0.1 / --snr_value 0.5",
                   "learning_rate / lr_warmup_steps / max_steps": f"{_MAPO} --learning_rate=1e-5 "
                                                                  f"--lr_warmup_steps=0 --max_train_steps=2000",
                   "train_batch_size / gradient_accumulation_steps": f"{_MAPO} --train_batch_size=8 "
                                                                     f"--gradient_accumulation_steps=2",
                   "lora_rank / lora_alpha": f"{_MAPO} --lora_rank=8; train_with_lora.py lora_alpha = rank",
                   "adam_* / max_grad_norm": "mapo args.py defaults (weight decay 1e-2)",
                   "loss_space / guided": "mapo utils.py compute_loss: the ε / v MSE of the unguided UNet",
                   "num_inference_steps / guidance_scale": "mapo utils.py log_validation (25 steps, 5.0)"},
           deviations=("t is one of the chain's sampling steps, shared by the micro-batch (the reference: one "
                       "of 1000 per pair)", "no random flip or crop of dataset images; pairs with tied "
                       "labels are dropped (the reference's --remove_ties default)")),
    Preset("d3po", "d3po",
           config=dict(beta=0.1, clip_range=0.1, noise_level=1.0, timestep_fraction=1.0, timestep_selection="random",
                       learning_rate=3e-5, adam_beta1=0.9, adam_beta2=0.999, adam_weight_decay=1e-4,
                       adam_epsilon=1e-8, max_grad_norm=1.0, prompts_per_step=1, lora_rank=4, lora_alpha=4.0),
           process=dict(num_inference_steps=20, guidance_scale=5.0),
           origin={"beta / clip_range": f"{_D3PO} train.beta / train.eps", "noise_level": f"{_D3PO} sample.eta",
                   "timestep_fraction": f"{_D3PO} train.timestep_fraction",
                   "timestep_selection": "d3po scripts/train_d3po.py: a random permutation of the steps",
                   "learning_rate / adam_* / max_grad_norm": f"{_D3PO} train.*",
                   "prompts_per_step": f"{_D3PO} train.batch_size = 1 (one pair per update)",
                   "lora_rank / lora_alpha": "diffusers LoRAAttnProcessor default rank 4, scale 1",
                   "num_inference_steps / guidance_scale": f"{_D3PO} sample.num_steps / sample.guidance_scale"},
           deviations=("each update samples its own pair (the reference samples 20 pairs, then makes 20 updates)",
                       "the preference is a reward's (the paper's: human labels on the reference's image pairs)")),
    Preset("prdp", "prdp",
           config=dict(group_size=8, prompts_per_step=64, beta=10.0, log_prob_reduce="sum", clip_range=1e-4,
                       inner_epochs=1, noise_level=1.0, timestep_fraction=1.0),
           process=dict(num_inference_steps=50, guidance_scale=5.0),
           origin={"group_size / prompts_per_step": f"{_PRDP}: large-scale batch 64 prompts × 8 images",
                   "beta": f"{_PRDP}: β = 10 (its KL-regularization setting)",
                   "log_prob_reduce": "the derivation's trajectory density (summed over dimensions)",
                   "noise_level / timestep_fraction": "DDPO's η = 1, all steps (PRDP's baseline setup; unverified)",
                   "clip_range / inner_epochs": "unknown in PRDP; DDPO's clip range 1e-4, one update per batch",
                   "num_inference_steps / guidance_scale": f"{_PRDP}: 50 steps, guidance 5.0"},
           deviations=("PRDP has no public code: values are from the paper's description as summarized, "
                       "not checked against the authors' settings", "LoRA (the paper fine-tunes SD 1.4's UNet)",
                       "the learning rate and snapshot interval are not stated there: set learning_rate")),
    Preset("spo", "spo",
           config=dict(samples_per_step=4, beta=10.0, clip_range=0.1, threshold=0.3, start_step=4, noise_level=1.0,
                       guided=True, prompts_per_step=10, train_batch_size=10, learning_rate=6e-5, adam_beta1=0.9,
                       adam_beta2=0.999, adam_weight_decay=1e-4, adam_epsilon=1e-8, max_grad_norm=1.0,
                       gradient_accumulation_steps=1, lora_rank=4, lora_alpha=4.0,
                       target_modules=("to_q", "to_k", "to_v", "to_out.0")),
           process=dict(num_inference_steps=20, guidance_scale=5.0),
           origin={"samples_per_step": "SPO configs/spo_sd-v1-5_4k-prompts_num-sam-4_10ep_bs10.py "
                                       "sample.num_sample_each_step = 4 (basic_config: 2)",
                   "beta": f"{_SPO} train.beta = 10.0", "clip_range": f"{_SPO} train.eps = 0.1",
                   "threshold": f"{_SPO} compare_func_cfg threshold = 0.3 (SDXL config: 0.4)",
                   "start_step": f"{_SPO} train.divert_start_step = 4",
                   "noise_level": f"{_SPO} sample.eta = 1.0", "guided": f"{_SPO} train.cfg = True",
                   "prompts_per_step": f"{_SPO} sample.sample_batch_size = 10 (per GPU)",
                   "train_batch_size": f"{_SPO} train.train_batch_size = 10",
                   "learning_rate / adam_* / max_grad_norm / gradient_accumulation_steps": f"{_SPO} train.*",
                   "lora_rank / lora_alpha / target_modules": "SPO train_scripts/train_spo.py LoraConfig(r = "
                                                              "lora_rank 4, lora_alpha = lora_rank, to_k/q/v/out.0)",
                   "num_inference_steps": f"{_SPO} sample.num_steps = 20",
                   "guidance_scale": f"{_SPO} sample.guidance_scale = 5.0"},
           deviations=("candidates are ranked by the given reward on their decoded x̂0, not by SPO's step-aware "
                       "preference model (which also reads the timestep): threshold 0.3 is on PickScore-like "
                       "logits, set it for your reward",
                       "SPO's LoRA is initialized 'gaussian' (peft); steer's LoRA init is its own",
                       "10 epochs over 4k prompts is a prompt-set size: set --max-steps for your prompts",
                       "the SPO paper's LoRA for SDXL (rank 64, lr 1e-5, threshold 0.4, k = 2) is not a preset")),
    Preset("inpo", "inpo",
           config=dict(beta=2000.0, inversion_eta=0.1, learning_rate=1.024e-5, lr_warmup_steps=200, max_steps=400,
                       train_batch_size=1, gradient_accumulation_steps=128, adam_beta1=0.9, adam_beta2=0.999,
                       adam_weight_decay=1e-2, adam_epsilon=1e-8, max_grad_norm=1.0, loss_space="model",
                       guided=False),
           process=dict(num_inference_steps=10, guidance_scale=7.5),
           origin={"beta": f"{_INPO} --beta_dpo 2000", "inversion_eta": "InPO train.py inversion_eta = 0.1",
                   "learning_rate": f"{_INPO} --learning_rate 1e-8 --scale_lr: 1e-8 × 128 accumulation × "
                                    f"8 GPUs × batch 1",
                   "lr_warmup_steps / max_steps": f"{_INPO} --lr_warmup_steps 200 --max_train_steps 400",
                   "train_batch_size / gradient_accumulation_steps": f"{_INPO} --train_batch_size 1 "
                                                                     f"--gradient_accumulation_steps 128 (per GPU)",
                   "adam_* / max_grad_norm": "InPO train.py argparse defaults (weight decay 1e-2, clip 1.0)",
                   "loss_space / guided": "InPO train.py: ε-prediction MSE of the conditional UNet",
                   "num_inference_steps": "InPO train.py inverse_scheduler.set_timesteps(10): the inversion grid",
                   "guidance_scale": "diffusers StableDiffusionPipeline default (evaluation)"},
           deviations=("the reference fine-tunes the full UNet from an SFT checkpoint (--unet_init "
                       "checkpoints/sd15-sft, also its reference model); this preset trains a LoRA on the given "
                       "model, so its learning rate is likely too small for a LoRA",
                       "1024 pairs per step = 8 GPUs × 128 accumulation; here gradient_accumulation_steps = 128 "
                       "on each process: launch 8 processes for the paper's batch",
                       "t is one of the chain's 10 steps and inversion lands on it exactly (the reference: t of "
                       "1000, inverted to the grid point below it)", "no random horizontal flip of dataset images")),
)
