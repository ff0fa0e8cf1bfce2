"""The rich progress bar every datagen command shows: description, bar, done/total, items per second,
elapsed time and time remaining."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class ItemsPerSecond(ProgressColumn):
    """The task's rate, e.g. ``2.50 samples/s`` (nothing until rich has measured one); a task may name
    its own unit (``progress.add_task(..., unit="images")``)."""

    def __init__(self, unit: str = "samples"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {task.fields.get('unit', self.unit)}/s" if task.speed else "")


def progress_bar(console: Console, unit: str = "samples") -> Progress:
    """A Progress on ``console`` whose rate column counts ``unit`` (samples, steps, images...)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), ItemsPerSecond(unit),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False)
