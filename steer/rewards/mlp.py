"""The preference head shared by ImageReward and the LAION aesthetic predictor v2.

``layers``: Linear(d, 1024) · Dropout(0.2) · Linear(1024, 128) · Dropout(0.2) · Linear(128, 64) ·
Dropout(0.1) · Linear(64, 16) · Linear(16, 1) — no nonlinearities (as in both references), so the
parameter keys are ``layers.{0,2,4,6,7}.{weight,bias}``, matching their checkpoints.
"""
from __future__ import annotations

from torch import Tensor, nn

HIDDEN = (1024, 128, 64, 16)
DROPOUT = (0.2, 0.2, 0.1)


class RewardMLP(nn.Module):
    """d -> 1024 -> 128 -> 64 -> 16 -> 1."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        dims = (input_size,) + HIDDEN
        blocks: list[nn.Module] = []
        for k in range(len(HIDDEN)):
            blocks.append(nn.Linear(dims[k], dims[k + 1]))
            if k < len(DROPOUT):
                blocks.append(nn.Dropout(DROPOUT[k]))
        blocks.append(nn.Linear(HIDDEN[-1], 1))
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (B, 1)
