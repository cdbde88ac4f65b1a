"""Optimal-transport alignment of a CLIP's text and image tokens as a reward, after PISCES (Le et al. 2026,
"PISCES: Annotation-free Text-to-Video Post-Training via Optimal Transport-Aligned Rewards", ICML 2026).

Two terms, both on a transformers ``CLIPModel``'s own joint space (unit-norm projections):

- semantic (token level): a partial, entropic OT plan γ between the prompt's token embeddings (every
  real token after SOT, projected by ``text_projection``) and the image's tokens (class token and
  patches, through ``post_layernorm`` and ``visual_projection``), cost C = 1 − cos, uniform marginals,
  transported mass ``mass``: S_sem = Σ γ_ij·cos_ij / mass (POT's ``entropic_partial_wasserstein``, Benamou
  et al. 2015, run on torch tensors so gradients reach the pixels through the Sinkhorn iterations);
- distributional (batch level): the exact OT plan π between the batch's pooled image embeddings and its
  pooled caption embeddings (uniform, ``ot.emd``); each image's term is 1 − B·Σ_j π_ij·C_ij, the cost its
  own mass pays in the batch coupling (= the cosine when B = 1). The plan is held fixed in the gradient
  (the envelope theorem: ∂W/∂C = π). This term depends on what is scored together: a batch of one prompt's
  candidates (identical captions) gives each image its plain cosine; a batch mixing prompts rewards images
  the batch-level matching assigns to their own caption.

r = exp(logit_scale)·(S_sem + ``distribution_weight``·S_dist), with the CLIP's temperature (capped at 100).
Defaults (ours: the paper does not fix them for a CLIP): ``mass=0.5``, entropic ``reg=0.05``,
``iterations=100``, ``distribution_weight=1``.
Deviations from PISCES: PISCES first learns an OT map that carries text embeddings onto the real-video
embedding distribution and scores generated videos (a video VLM's tokens) in that aligned space; here
the CLIP's text and image tokens are compared as they are (no learned map, no data), and the
distributional term couples the batch's images with its captions rather than with real data.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from steer.rewards.clip import WEIGHTS as CLIP_WEIGHTS
from steer.rewards.encoders import ClipEncoder, ClipEncoderReward, is_transformers_clip
from steer.rewards.preprocess import processor_preprocess

INSTALL = "pip install steer[ot]"


def pot():
    """The POT module, or a one-line error naming the install."""
    try:
        import ot
    except ImportError:
        raise ImportError(f"the optimal-transport rewards need the POT library: {INSTALL}") from None
    return ot


def image_tokens(model, pixels: Tensor) -> Tensor:
    """Unit-norm projected class + patch tokens (B, 1 + P, D) of a transformers CLIPModel."""
    hidden = model.vision_model(pixel_values=pixels).last_hidden_state  # (B, 1+P, W)
    return F.normalize(model.visual_projection(model.vision_model.post_layernorm(hidden)).float(), dim=-1)


def text_tokens(model, ids: Tensor, mask: Tensor) -> tuple[list[Tensor], Tensor]:
    """Per prompt the unit-norm projected tokens after SOT [(n_b, D)], and the pooled embeddings (B, D)."""
    out = model.text_model(input_ids=ids, attention_mask=mask)
    proj = F.normalize(model.text_projection(out.last_hidden_state).float(), dim=-1)  # (B, L, D)
    pooled = F.normalize(model.text_projection(out.pooler_output).float(), dim=-1)  # (B, D)
    return [p[1:int(m.sum())] for p, m in zip(proj, mask)], pooled


def semantic(tokens: Tensor, patches: Tensor, *, mass: float, reg: float, iterations: int) -> Tensor:
    """Σ γ_ij·cos_ij / mass for the partial entropic OT plan γ between ``tokens`` (n, D) and ``patches`` (m, D)."""
    ot = pot()
    cos = tokens @ patches.T  # (n, m)
    a = torch.full((cos.shape[0],), 1.0 / cos.shape[0], dtype=cos.dtype, device=cos.device)
    b = torch.full((cos.shape[1],), 1.0 / cos.shape[1], dtype=cos.dtype, device=cos.device)
    m = torch.tensor(mass, dtype=cos.dtype, device=cos.device)
    plan = ot.partial.entropic_partial_wasserstein(a, b, 1 - cos, reg, m=m, method="sinkhorn_log",
                                                   numItermax=iterations, stopThr=1e-9)
    return (plan * cos).sum() / mass


def distributional(images: Tensor, texts: Tensor) -> Tensor:
    """Per image (B,): 1 − B·Σ_j π_ij·(1 − cos_ij) for the exact OT plan π between the two batches."""
    ot = pot()
    cost = 1 - images @ texts.T  # (B, B)
    B = cost.shape[0]
    u = torch.full((B,), 1.0 / B, dtype=cost.dtype, device=cost.device)
    plan = ot.emd(u, u, cost.detach())  # (B, B), fixed in the gradient
    return 1 - B * (plan * cost).sum(1)


class OTClipReward(ClipEncoderReward):
    """PISCES-style OT reward on a transformers CLIP: semantic partial OT of tokens + batch OT term."""

    name = "clip-ot"
    preprocess = staticmethod(processor_preprocess)
    weights = CLIP_WEIGHTS

    def __init__(self, encoder: ClipEncoder, *, mass: float = 0.5, reg: float = 0.05, iterations: int = 100,
                 distribution_weight: float = 1.0):
        if not is_transformers_clip(encoder.model):
            raise ValueError("the OT reward reads token embeddings of a transformers CLIPModel; open_clip models "
                             "are not supported (use clip / pickscore for them)")
        if not 0 < mass <= 1:
            raise ValueError(f"{self.name}: mass must be in (0, 1], got {mass!r}")
        if reg <= 0 or iterations < 1:
            raise ValueError(f"{self.name}: reg must be > 0 and iterations >= 1, got reg={reg!r}, "
                             f"iterations={iterations!r}")
        pot()
        super().__init__(encoder)
        self.mass, self.reg, self.iterations = float(mass), float(reg), int(iterations)
        self.weight = float(distribution_weight)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        enc, model = self.encoder, self.encoder.model
        param = next(model.parameters())
        pixels = enc.preprocess(images.to(param.device, param.dtype), enc.image_size, enc.mean, enc.std)
        patches = image_tokens(model, pixels)  # (B, 1+P, D)
        ids, mask = _tokens(enc.tokenizer, prompts, model.config.text_config.max_position_embeddings)
        words, pooled = text_tokens(model, ids.to(param.device), mask.to(param.device))
        sem = torch.stack([semantic(w, p, mass=self.mass, reg=self.reg, iterations=self.iterations)
                           for w, p in zip(words, patches)])  # (B,)
        dist = distributional(patches[:, 0], pooled)  # (B,)
        scale = model.logit_scale.float().exp().clamp(max=100)
        return scale * (sem + self.weight * dist)  # (B,)


def _tokens(tokenizer, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    tok = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return tok.input_ids, tok.attention_mask
