"""Batched rollouts to x_0 from states at different chain steps (used by the tree search)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from steer import chain
from steer.types import Cond


@torch.no_grad()
def rollout(process, cond: Cond, rows: Tensor, starts: Sequence[int], x: Tensor, record: Sequence[int], *,
            noise_level: float, generator: Optional[torch.Generator] = None, trace=None) -> tuple[Tensor, dict[int, Tensor]]:
    """Run row ``k`` of ``x`` from chain step ``starts[k]`` to the end with the stochastic kernel.

    All rows that have reached step i share one denoiser call at step i. ``rows`` gives the prompt
    (row of ``cond``) of each latent. Returns the final latents (K, ...) and, for every step in
    ``record``, the latents at that step (K, ...) — rows that started later than it hold their own
    start there, which callers do not read.
    """
    num_steps = process.num_steps
    start = torch.as_tensor(list(starts), dtype=torch.long)  # (K,)
    x = x.float().clone()  # (K, *latent_shape)
    wanted = set(record)
    snaps: dict[int, Tensor] = {}
    if 0 in wanted:
        snaps[0] = x.clone()
    for i in range(int(start.min()), num_steps):
        active = torch.nonzero(start <= i).flatten()  # (A,)
        x_next, _, _ = chain.step(process, x[active], i, cond.index(rows[active]), noise_level=noise_level,
                                  generator=generator, trace=trace)
        x[active] = x_next.float()
        if i + 1 in wanted:
            snaps[i + 1] = x.clone()
    return x, snaps
