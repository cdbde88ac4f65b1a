"""The learning-rate schedule both shapes trainers use: linear warm-up, then cosine decay on the
wall clock (the stages are capped in minutes, not steps, so ``progress`` is elapsed / budget)."""
import math


def warmup_cosine(peak: float, step: int, warmup: int, progress: float) -> float:
    """``peak * min(1, (step + 1) / warmup) * (1 + cos(pi * progress)) / 2``, ``progress`` clipped to [0, 1]."""
    return peak * min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(progress, 0.0))))
