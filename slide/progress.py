"""A rich progress bar for training steps that shows a few live metrics."""
from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    def __init__(self, label: str, total: int, keys: list[str], start: int = 0):
        self.keys = keys
        self.shown: dict[str, float] = {}
        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            disable=not sys.stderr.isatty(), console=None)
        self.task = self.bar.add_task(label, total=total, completed=start, info="")

    def update(self, step: int, metrics: dict) -> None:
        self.shown.update({k: metrics[k] for k in self.keys if k in metrics})
        info = "  ".join(f"{k}={v:.3f}" for k, v in self.shown.items())
        self.bar.update(self.task, completed=step, info=info)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)
