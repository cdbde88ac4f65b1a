"""The "grey world": a tiny pixel-space DDPM (``steer.zoo.tiny`` ``ddpm``, a real ``UNet2DModel``)
briefly trained on uniform grey 8x8 images whose level is uniform in [0.2, 0.8].

Its samples vary in brightness (std about 0.05 with deterministic DDIM, 0.12 with η = 1), so a
brightness reward has something real to select and fine-tuning has something real to learn, in
seconds on a CPU. The random tiny SD pipelines cannot serve here: their random VAE lets brightness
move by only about ±0.01. Used by the fine-tuning tests and ``benchmarks/finetune.py``.

DDIM uses "trailing" timestep spacing: with the default "leading" one the last stochastic step lands
on ᾱ ≈ 0.9999 with σ ≈ 0.01, and GRPO's dimension-averaged log-prob gradients (∝ 1/σ) drown the others.
"""
from __future__ import annotations

import torch

from steer.zoo.tiny import build

SIZE = 8


def train_state(steps: int = 120, seed: int = 0) -> dict[str, torch.Tensor]:
    """The UNet's weights after ``steps`` AdamW steps (lr 1e-3, batch 32) of the ε-loss on the grey world."""
    pipe = build("ddpm")
    unet, alphas = pipe.unet, pipe.scheduler.alphas_cumprod
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        level = torch.rand(32, 1, 1, 1, generator=g) * 0.6 + 0.2  # (32, 1, 1, 1) in [0.2, 0.8]
        x0 = (2 * level - 1).expand(32, 3, SIZE, SIZE)  # (32, 3, 8, 8) in [-1, 1]
        t = torch.randint(0, len(alphas), (32,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        loss = torch.nn.functional.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def process(state: dict[str, torch.Tensor], num_inference_steps: int = 4, spacing: str = "trailing"):
    """A steer ``Process`` over a fresh pipeline carrying ``state`` (frozen)."""
    from diffusers import DDIMScheduler

    from steer.pipelines import from_pipe

    pipe = build("ddpm")
    pipe.unet.load_state_dict(state)
    pipe.unet.eval().requires_grad_(False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
    return from_pipe(pipe, num_inference_steps=num_inference_steps, height=SIZE, width=SIZE)


def brightness(process, eta: float, n: int = 64, seed: int = 1000) -> float:
    """Mean brightness of ``n`` fresh samples (seed ``seed``) at kernel noise ``eta``."""
    from steer import chain

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = chain.run(process, process.init_noise(n, g), process.prepare(["grey"] * n), noise_level=eta, generator=g)
        return float(process.decode(x).mean())
