"""Train the shapes text-to-image model (issue 8, item 4): a real ``StableDiffusionPipeline``.

``python -m steer.zoo.shapes.train_pipeline --out DIR [--minutes M]``

Components (latent diffusion as in Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"; classifier-free guidance as in Ho & Salimans 2022):

* ``AutoencoderKL`` with downsampling factor 2: 32x32 RGB <-> 4x16x16 latents, trained first on the
  world's training images with an L1 + L2 reconstruction loss and a small KL weight (``KL_WEIGHT``;
  SD used a perceptual + GAN loss, which flat-colour scenes do not need). ``scaling_factor`` is set to
  1 / std of the training latents, as SD did.
* The base shapes CLIP's text tower (``train``; not the reward CLIP) as a frozen ``CLIPTextModel``
  and its 1000-token CLIP tokenizer (``model_max_length`` cut to ``MAX_TOKENS``: every caption of the grammar fits).
* ``UNet2DConditionModel`` (``unet_config``) cross-attending to the text encoder's last hidden
  states, trained with the epsilon objective on SD's scaled-linear 1000-step schedule, 10% of
  captions replaced by the empty caption (CFG dropout), EMA of the weights.
* ``DDIMScheduler`` with SD's configuration.

Training is bounded by wall-clock time (``--minutes``; the VAE gets ``VAE_SHARE`` of it), then the
EMA pipeline is saved (fp16 safetensors unless ``--fp32``) and evaluated with the exact checker on
single-object captions (``test`` scenes) and held-out relational captions.

The UNet's learning rate warms up over 100 steps, then decays to 0 on a cosine of the wall clock
(``schedule.warmup_cosine``). Checker accuracy, mean of 4 sampling seeds (single-object / held-out
relational captions; 25 DDIM steps, guidance 4):

* shipped (one ``train`` run): 38 min, 4454 UNet steps of batch 32, on its 15-min base CLIP's tower:
  96.4% / 24.0% (seed 0 alone: 100% / 29.8%; seeds 0, 1000, 2000, 3000 give 29.8, 14.4, 26.9, 25.0%
  relational).
* earlier: 40 min at a constant learning rate on another 15-min base: 93.2% / 25.5%; on a 14-min
  base's tower, 38 min: constant rate, 5171 steps: 70.8% / 10.6%; cosine, 4683 steps: 96.9% / 18.3%.
  The cosine schedule wins on the same tower; the tower matters for relations.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from steer.zoo.shapes.generator import DEFAULT_GUIDANCE_SCALE as DEFAULT_GUIDANCE  # noqa: E402
from steer.zoo.shapes.generator import DEFAULT_NUM_INFERENCE_STEPS as DEFAULT_STEPS  # noqa: E402
from steer.zoo.shapes.schedule import warmup_cosine  # noqa: E402
from steer.zoo.shapes.world import batch, split_captions  # noqa: E402

MAX_TOKENS = 24  # longest caption of the grammar is 13 tokens with SOT/EOT
KL_WEIGHT = 1e-6
VAE_SHARE = 0.15
CFG_DROPOUT = 0.1
EMA_DECAY = 0.998


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def unet_config(width: int = 48) -> dict:
    """16x16 -> 8x8 -> 4x4; self- and cross-attention at 8x8 and 4x4 only (16x16 attention costs
    most of a step on CPU and the relations are decided at the coarse levels)."""
    return dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(width, 2 * width, 2 * width),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=128, attention_head_dim=4, norm_num_groups=16)


def scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def text_parts(clip_dir=None):
    """A shapes CLIP's text tower (frozen) and its tokenizer with ``MAX_TOKENS``: from the CLIP saved at
    ``clip_dir``, or by default the shipped pipeline's own ``text_encoder`` and ``tokenizer`` (the
    base CLIP's; the shipped ``clip()`` is the reward CLIP fine-tuned from it)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from steer.zoo.shapes.generator import WEIGHTS_DIR as PIPELINE_DIR

    where, enc_sub, tok_sub = (clip_dir, "", "") if clip_dir else (PIPELINE_DIR, "text_encoder", "tokenizer")
    enc = CLIPTextModel.from_pretrained(str(where), subfolder=enc_sub, dtype=torch.float32)
    tok = CLIPTokenizer.from_pretrained(str(where), subfolder=tok_sub, model_max_length=MAX_TOKENS)
    return enc.eval().requires_grad_(False), tok


@torch.no_grad()
def encode_text(enc, tok, captions: list[str]) -> torch.Tensor:
    ids = tok(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
    return enc(ids)[0]  # (N, L, 128)


def train_vae(images: torch.Tensor, seconds: float, log, batch_size: int = 32, lr: float = 2e-3):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, step = time.time(), 0
    while time.time() - start < seconds:
        idx = torch.randint(len(images), (batch_size,))
        x = images[idx] * 2 - 1  # (B, 3, 32, 32) in [-1, 1]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean()
        loss = F.mse_loss(rec, x) + F.l1_loss(rec, x) + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.4f} kl {kl.item():.1f} ({time.time() - start:.0f}s)")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    return torch.cat([vae.encode(images[i:i + chunk] * 2 - 1).latent_dist.mean
                      for i in range(0, len(images), chunk)])  # (N, 4, 16, 16)


def train_unet(latents, cond, caption_ids, empty, seconds: float, log, width: int = 48,
               batch_size: int = 32, lr: float = 1e-3, warmup: int = 100, init=None):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel(**unet_config(width)) if init is None else init.float().train().requires_grad_(True)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    sched = scheduler()
    abar = sched.alphas_cumprod  # (T,)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    start, step = time.time(), 0
    while time.time() - start < seconds:
        idx = torch.randint(len(latents), (batch_size,))
        z0 = latents[idx]  # (B, 4, 16, 16)
        c = cond[caption_ids[idx]]  # (B, L, 128)
        drop = torch.rand(batch_size) < CFG_DROPOUT
        c = torch.where(drop[:, None, None], empty.expand_as(c), c)
        t = torch.randint(0, len(abar), (batch_size,))
        eps = torch.randn_like(z0)
        a = abar[t].reshape(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps  # (B, 4, 16, 16)
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=c).sample, eps)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(lr, step, warmup, (time.time() - start) / seconds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        if step % 100 == 0:
            log(f"unet step {step} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    return ema, step


def assemble(vae, unet, enc, tok):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=enc, tokenizer=tok, unet=unet, scheduler=scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def evaluate(pipe, n_single: int = 48, n_relation: int = 104, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, seed: int = 0, chunk: int = 64) -> dict[str, float]:
    """Checker accuracy on single-object captions and held-out relational captions."""
    from steer.zoo.shapes.checker import check

    singles = split_captions("test")["single"]
    single = [singles[i % len(singles)] for i in range(n_single)]
    rels = sorted(split_captions("heldout")["relation"])
    relation = [rels[i % len(rels)] for i in range(n_relation)]
    out = {}
    for name, caps in (("single", single), ("relation", relation)):
        ok = []
        for i in range(0, len(caps), chunk):
            g = torch.Generator().manual_seed(seed + i)
            imgs = pipe(caps[i:i + chunk], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                        output_type="pt").images  # (B, 3, 32, 32)
            ok.append(check(imgs.float().cpu(), caps[i:i + chunk]))
        out[name] = torch.cat(ok).float().mean().item()
    return out


def train(out, minutes: float = 40.0, n_images: int = 30000, width: int = 48, batch_size: int = 32,
          fp32: bool = False, threads: int = 2, resume=None, clip_dir=None, log=print,
          eval_sizes: tuple[int, int] = (48, 104)) -> dict[str, float]:
    """Train (or, with ``resume``, continue) the pipeline, save it to ``out``; returns its checker accuracies
    on ``eval_sizes`` = (single-object, held-out relational) captions."""
    torch.set_num_threads(threads)
    t0 = time.time()
    images, captions = batch(n_images, seed=0, split="train")
    log(f"{len(images)} training scenes")
    enc, tok = text_parts(clip_dir)
    uniq = sorted(set(captions))
    cond = encode_text(enc, tok, uniq)  # (U, L, 128)
    empty = encode_text(enc, tok, [""])  # (1, L, 128)
    where = {c: i for i, c in enumerate(uniq)}
    caption_ids = torch.tensor([where[c] for c in captions])
    budget = minutes * 60
    init = None
    if resume:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        vae = AutoencoderKL.from_pretrained(resume, subfolder="vae", dtype=torch.float32).eval()
        init = UNet2DConditionModel.from_pretrained(resume, subfolder="unet", dtype=torch.float32)
        budget += time.time() - t0
    else:
        vae = train_vae(images, VAE_SHARE * budget, log)
    latents = encode_images(vae, images)
    from steer.zoo.shapes.checker import check

    rec = vae.decode(latents[:256]).sample.clamp(-1, 1) / 2 + 0.5  # (256, 3, 32, 32)
    log(f"vae reconstruction checker accuracy {check(rec, captions[:256]).float().mean().item():.3f}")
    scale = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scale)
    log(f"latent scaling_factor {scale:.4f}")
    unet, steps = train_unet(latents * scale, cond, caption_ids, empty, budget - (time.time() - t0), log,
                             width=width, batch_size=batch_size, init=init)
    log(f"unet trained for {steps} steps")
    pipe = assemble(vae, unet, enc, tok)
    if not fp32:
        pipe.to(dtype=torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    log(f"saved to {out}")
    pipe.to(dtype=torch.float32)
    accuracy = evaluate(pipe, *eval_sizes)
    log(f"checker accuracy {accuracy}")
    return accuracy


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock cap for VAE + UNet training")
    ap.add_argument("--n-images", type=int, default=30000)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--fp32", action="store_true", help="save fp32 weights (default fp16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip", default=None,
                    help="a saved shapes CLIP whose text tower conditions the UNet (default: the shipped pipeline's)")
    ap.add_argument("--resume", default=None,
                    help="a saved pipeline folder: keep its VAE and continue training its UNet (all --minutes)")
    args = ap.parse_args(argv)
    t0 = time.time()

    def log(msg):
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    train(args.out, args.minutes, args.n_images, args.width, args.batch_size, args.fp32, args.threads,
          args.resume, args.clip, log)


if __name__ == "__main__":
    main()
