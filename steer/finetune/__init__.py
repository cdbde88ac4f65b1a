"""Fine-tuning fallback: LoRA trained along the sampling chain.

- ``draft`` — reward backprop: DRaFT-K, DRaFT-LV, AlignProp (``steer.finetune.draft``)
- ``grpo`` — DDPO / Flow-GRPO on the stochastic kernels' log-probs (``steer.finetune.grpo``)
- ``distill`` — steering (fk, dts_star, best_of_n, reno) distilled into a LoRA, RAFT-style
- ``dpo`` / ``kto`` — Diffusion-DPO on preference pairs, Diffusion-KTO on desirable / undesirable
  samples, from a Pick-a-Pic dataset, steering, or a verifier (``steer.finetune.preference_data``)
- ``soar`` — SOAR: on-policy self-correction toward steered samples (``steer.finetune.soar``)
- ``mapo`` — MaPO: reference-free margin-aware preference optimization on the same pairs as ``dpo``
- ``d3po`` — D3PO: DPO on pairs of the model's own trajectories from one noise, per denoising step
- ``prdp`` — PRDP: reward differences within a prompt's group regressed by trajectory log-ratios
- ``spo`` — SPO: step-wise preference pairs of k candidates from one x_t, DPO on the kernel's log-probs
  (``steer.finetune.spo``)
- ``inpo`` — InPO: Diffusion-DPO on DDIM-inverted latents instead of random forward noise
  (``steer.finetune.inpo``)
- ``nft`` — DiffusionNFT: positive / negative implicit policies on the forward process, any sampler,
  any reward (``steer.finetune.nft``)
Each takes ``(process, reward, prompts, config, out_dir=...)`` and writes ``out_dir/lora`` (loadable with
``pipe.load_lora_weights``), ``metrics.jsonl`` and resumable ``checkpoints/``.
"""
from steer.finetune.config import (CONFIGS, D3POConfig, DistillConfig, DPOConfig, DraftConfig, GRPOConfig, InPOConfig,
                                   KTOConfig, MaPOConfig, NFTConfig, PRDPConfig, SoarConfig, SPOConfig, TrainConfig)
from steer.finetune.distill import distill
from steer.finetune.dpo import dpo
from steer.finetune.draft import draft
from steer.finetune.grpo import grpo
from steer.finetune.inpo import inpo
from steer.finetune.kto import kto
from steer.finetune.nft import nft
from steer.finetune.soar import soar
from steer.finetune.mapo import mapo
from steer.finetune.d3po import d3po
from steer.finetune.prdp import prdp
from steer.finetune.spo import spo
from steer.finetune.lora import attach_lora, load_lora, lora_disabled, merge_lora, save_lora
from steer.finetune.trainer import TrainResult

METHODS = {"draft": draft, "grpo": grpo, "distill": distill, "dpo": dpo, "kto": kto, "nft": nft, "soar": soar,
           "mapo": mapo, "d3po": d3po, "prdp": prdp, "inpo": inpo, "spo": spo}

__all__ = ["draft", "grpo", "distill", "dpo", "kto", "DraftConfig", "GRPOConfig", "DistillConfig", "DPOConfig",
           "KTOConfig", "NFTConfig", "nft", "SoarConfig", "soar", "TrainConfig", "CONFIGS", "METHODS", "mapo", "d3po",
           "prdp", "MaPOConfig", "D3POConfig", "PRDPConfig", "inpo", "InPOConfig", "spo", "SPOConfig", "TrainResult",
           "attach_lora", "save_lora", "load_lora", "merge_lora", "lora_disabled"]
