"""``reward.png`` in a fine-tuning run's folder: the mean reward per step (and the held-out eval reward,
when one is logged), drawn with PIL so that no plotting library is needed at run time."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

SERIES = (("reward_mean", (31, 119, 180), "reward"), ("eval_reward_mean", (214, 39, 40), "eval reward"))
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 400, 70, 20, 30, 45


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * k / (n - 1) for k in range(n)]


def reward_plot(metrics: Sequence[dict], path: Path) -> Path | None:
    """Draw each logged series of ``metrics`` (``metrics.jsonl`` records) against ``step`` into ``path``
    (PNG, written atomically); None when no step has a reward."""
    from PIL import Image, ImageDraw

    from steer.io import atomic_write_bytes

    series = [(key, color, label, [(m["step"], m[key]) for m in metrics if m.get(key) is not None])
              for key, color, label in SERIES]
    series = [s for s in series if s[3]]
    if not series:
        return None
    steps = [p[0] for s in series for p in s[3]]
    values = [p[1] for s in series for p in s[3]]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(values), max(values)
    pad = (y1 - y0) * 0.05 or max(abs(y0) * 0.05, 1e-3)
    y0, y1 = y0 - pad, y1 + pad
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)

    def px(step: float, value: float) -> tuple[float, float]:
        return (LEFT + (step - x0) / (x1 - x0) * (W - LEFT - RIGHT),
                H - BOTTOM - (value - y0) / (y1 - y0) * (H - TOP - BOTTOM))

    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for v in _ticks(y0, y1):
        _, y = px(x0, v)
        d.line([LEFT - 4, y, LEFT, y], fill="black")
        d.text((4, y - 6), f"{v:.4g}", fill="black")
    for s in _ticks(x0, x1):
        x, _ = px(s, y0)
        d.line([x, H - BOTTOM, x, H - BOTTOM + 4], fill="black")
        d.text((x - 10, H - BOTTOM + 8), f"{s:.0f}", fill="black")
    d.text((W // 2 - 15, H - 18), "step", fill="black")
    for k, (_, color, label, pts) in enumerate(series):
        xy = [px(s, v) for s, v in pts]
        if len(xy) == 1:
            d.ellipse([xy[0][0] - 3, xy[0][1] - 3, xy[0][0] + 3, xy[0][1] + 3], fill=color)
        else:
            d.line(xy, fill=color, width=2)
        d.text((LEFT + 10 + 120 * k, 8), f"— {label}", fill=color)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
