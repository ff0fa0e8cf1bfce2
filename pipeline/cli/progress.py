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
    """The task's rate, e.g. ``2.50 samples/s`` (nothing until rich has measured one, or while it is not
    positive: a retried shard takes back the samples it had counted); a task may name its own unit
    (``progress.add_task(..., unit="images")``)."""

    def __init__(self, unit: str = "samples"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.speed
        return Text(f"{speed:.2f} {task.fields.get('unit', self.unit)}/s" if speed and speed > 0 else "")


class TimeRemaining(TimeRemainingColumn):
    """rich's estimate, unknown (``-:--:--``) while the rate is not positive instead of a negative time."""

    def render(self, task) -> Text:
        if not task.finished and task.speed is not None and task.speed <= 0:
            return Text("-:--:--", style="progress.remaining")
        return super().render(task)


def progress_bar(console: Console, unit: str = "samples", transient: bool = False) -> Progress:
    """A Progress on ``console`` whose rate column counts ``unit`` (samples, steps, images...); a
    ``transient`` one is erased when it stops (a command whose result line follows, or whose error
    must stay one line)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), ItemsPerSecond(unit),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemaining(), console=console, transient=transient)
