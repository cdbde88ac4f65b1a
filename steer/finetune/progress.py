"""``steer finetune``'s progress over optimizer steps (a rich bar on a terminal, else periodic lines on stderr)."""
from __future__ import annotations

import sys

import typer


class ProgressBar:
    """Live progress over optimizer steps: step, loss, reward, s/step and ETA — a rich bar on a terminal,
    else one line on stderr about every 5% of the run (and at the last step)."""

    def __init__(self, total: int):
        self.total, self.progress, self.every = total, None, max(1, total // 20)
        self.seconds: list[float] = []

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                                     transient=True)
            self.progress.start()
            self.task = self.progress.add_task("fine-tuning", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def line(self, record: dict) -> str:
        self.seconds.append(float(record.get("seconds") or 0.0))
        recent = self.seconds[-10:]
        per_step = sum(recent) / len(recent)
        eta = per_step * (self.total - record["step"])
        r, e = record.get("reward_mean"), record.get("eval_reward_mean")
        return (f"step {record['step']}/{self.total}  loss {record['loss']:.4g}"
                + (f"  reward {r:.4g}" if r is not None else "") + (f"  eval {e:.4g}" if e is not None else "")
                + f"  {per_step:.2f} s/step  ETA {eta:.0f}s")

    def __call__(self, record: dict) -> None:
        text = self.line(record)
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"], description=text)
        elif record["step"] % self.every == 0 or record["step"] == self.total:
            typer.echo(text, err=True)
