"""SVDD-PM: soft value-based decoding (Li et al. 2024, "Derivative-Free Guidance in Continuous and
Discrete Diffusion Models with Soft Value-Based Decoding"; code masa-ue/SVDD-image).

At every transition M candidates x_{t-1}^m are drawn from the pre-trained stochastic kernel
p(x_{t-1} | x_t) (all from the same x_t), each is valued by the posterior-mean value
v(x_{t-1}^m) = r(decode(x̂0(x_{t-1}^m))) (SVDD-PM: x̂0 from the denoiser call the next transition
needs, so valuing costs no extra NFE), and one is kept: ζ ~ Categorical(softmax(v/α)); α = 0 is
the argmax. The paper's Algorithm 1 selects at every transition t = T+1..1, so x_T is chosen among
M prior draws by v(x_T) and x_0 among M final candidates by v_0 = r(x_0).

Defaults: α = 0 (argmax: the reference image code, ``inference_decoding_nonp.py``, keeps
``np.argmax`` of the values; the paper's SMC baseline there uses α = 10), M = ``candidates`` = 20
(the reference's ``--duplicate_size``), DDIM η = 1 (the reference's ``eta=1.0``) for diffusion,
Flow-GRPO SDE a = 0.7 for flow (``noise_level``, alias ``eta`` on diffusion).
Deviations from the reference code (which follow the paper's algorithm): the reference starts from
one x_T per sample and keeps the first (unvalued) candidate at the last step; here x_T and x_0 are
selected too.

With α = 0 this is exactly ``beam(beam_width=1, candidates=M)`` (same kernel, same x̂0 value, same
selection, same draws from the generator; ``tests/test_search_svdd.py`` checks it); α > 0 is SVDD's
soft selection, which beam search does not have. Cost per prompt: M·S NFE and M·(S+1) reward calls.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor

from steer import chain, toolkit
from steer.budget import Budget, Trace
from steer.scoring import score_latents
from steer.types import StepInfo

METHOD = "svdd"


def select(v: Tensor, num_prompts: int, alpha: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Flat index (P,) of the kept candidate of each prompt's group of values ``v`` (P·M,):
    argmax when ``alpha`` = 0, else a draw from softmax(v / alpha) (SVDD's soft selection)."""
    if alpha == 0:
        return toolkit.top_rows(v, num_prompts, 1)
    per = v.numel() // num_prompts
    device = generator.device if generator is not None else v.device
    probs = torch.softmax(v.detach().float().view(num_prompts, per).to(device) / alpha, dim=1)  # (P, M)
    pick = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (P,)
    return (pick + per * torch.arange(num_prompts, device=device)).to(v.device)


@torch.no_grad()
def _svdd_steps(process, reward, prompts, cond, *, cands: int, alpha: float, level: float, generator,
                trace: Trace) -> Iterator[StepInfo]:
    """Core generator: yields after every step; returns the final states (P, ...) and their rewards (P, 1)."""
    P, S = len(prompts), process.num_steps
    rows = toolkit.prompt_rows(P, cands)  # (P·M,)
    names = [prompts[k] for k in rows.tolist()]
    x = process.init_noise(P * cands, generator)  # (P·M, *latent): M prior draws, t = T+1
    prop = chain.propose(process, x, 0, cond.index(rows), noise_level=level, trace=trace)
    v = score_latents(process, reward, prop.pred.x0, names, trace=trace, method=METHOD, step=0)
    keep = select(v, P, alpha, generator)
    x, prop, v = x[keep], prop.take(keep), v[keep]  # (P, ...)
    for i in range(S):
        x_next = chain.sample(prop.repeat(cands).kernel, generator)  # (P·M, *latent), M draws from each x_t
        if i + 1 < S:
            prop = chain.propose(process, x_next, i + 1, cond.index(rows), noise_level=level, trace=trace)
            v = score_latents(process, reward, prop.pred.x0, names, trace=trace, method=METHOD, step=i + 1)
        else:  # v_0 = r(x_0)
            v = score_latents(process, reward, x_next, names, trace=trace, method=METHOD)
        keep = select(v, P, alpha, generator)
        x, v = x_next[keep], v[keep]
        if i + 1 < S:
            prop = prop.take(keep)
        trace.record(step=i, nfe=trace.nfe, value=v.tolist())
        yield StepInfo(step=i, x=x, nfe=trace.nfe, extra={"rewards": v.view(P, 1)})
    return x, v.view(P, 1)


def svdd(process, reward, prompts, *, generator: Optional[torch.Generator] = None, budget: Optional[Budget] = None,
         callback=None, candidates: int = 20, alpha: float = 0.0, noise_level=toolkit.STOCHASTIC,
         eta: Optional[float] = None):
    """SVDD-PM (Li et al. 2024): at every step keep one of ``candidates`` kernel draws from the same
    x_t, valued by r(decode(x̂0)): the argmax (``alpha=0``, the reference's default) or a draw from
    softmax(value / ``alpha``). Defaults M = 20, α = 0, η = 1 / flow a = 0.7. NFE per prompt: M·S."""
    prompts = toolkit.prompt_list(METHOD, prompts)
    cands = toolkit.integer(METHOD, "candidates", candidates)
    alpha = toolkit.number(METHOD, "alpha", alpha)
    toolkit.check_reward(METHOD, reward)
    level = toolkit.noise_level(process, METHOD, noise_level, eta)
    if level == 0 and cands > 1:
        raise ValueError(f"{METHOD}: noise_level=0 makes every candidate identical; use noise_level > 0")
    S = process.num_steps
    trace = toolkit.plan(METHOD, len(prompts), budget, unit_nfe=cands * S, unit="one SVDD chain (candidates·steps)",
                         nfe=cands * S, reward_calls=cands * (S + 1), hint="lower candidates")
    core = _svdd_steps(process, reward, prompts, process.prepare(prompts), cands=cands, alpha=alpha, level=level,
                       generator=generator, trace=trace)
    x, v = toolkit.drain(core, callback)
    return toolkit.from_ranked(process, prompts, trace, x, v)
