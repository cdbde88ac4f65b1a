"""benchmarks/distill_ceiling.py: its premise (the renders it trains on satisfy their captions after the
VAE's round trip), its paired interval, and that the distill trainer fits the renders without sampling."""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from distill_ceiling import paired, renders, train_on_renders  # noqa: E402

from steer.finetune import lora  # noqa: E402
from steer.zoo.shapes import checker, pipeline  # noqa: E402

CAPTIONS = ["a red circle above a blue square", "a green triangle to the left of a red square"]


def test_renders_pass_the_checker_after_the_vae_round_trip():
    pipe = pipeline()
    latents, owners = renders(pipe, CAPTIONS, 3)
    assert latents.shape == (6, 4, 16, 16) and owners == [0, 1, 0, 1, 0, 1]
    with torch.no_grad():
        images = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1) + 1) / 2
    assert checker.check(images.float(), [CAPTIONS[i] for i in owners]).all()


def test_paired_difference_and_interval():
    base = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert paired(base, base) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired(base, torch.ones(3, 2))
    assert abs(diff - 0.5) < 1e-6 and 0.0 <= lo <= diff <= hi <= 1.0


def test_the_trainer_fits_the_renders_without_drawing_samples(tmp_path):
    pipe, config, _ = train_on_renders(CAPTIONS, 2, {"max_steps": 3, "learning_rate": 1e-3}, tmp_path)
    assert config.max_steps == 3 and config.loss_space == "model"
    b_norm = sum(float(p.detach().norm()) for n, p in lora.denoiser(pipe).named_parameters() if "lora_B" in n)
    assert b_norm > 0  # LoRA B starts at zero: three steps on the renders moved it
    metrics = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(metrics) == 3
    last = json.loads(metrics[-1])  # denoiser calls of the loss only (3 steps x 4 renders): nothing was sampled
    assert last["nfe"] == 12 and last["reward_calls"] == 0
