"""The rich progress bar every datagen command shows: description, bar, done/total, items per second and
the time remaining (once finished: the time taken), laid out to fit an 80-column terminal: the bar takes
what the other columns leave, and they are never cut."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Column
from rich.text import Text


class ItemsPerSecond(ProgressColumn):
    """The task's rate, e.g. ``2.50 samples/s`` or ``1234 samples/s`` (three or four digits; nothing until rich
    has measured one, or while it is not positive: a retried shard takes back the samples it had counted); a
    task may name its own unit (``progress.add_task(..., unit="images")``)."""

    def __init__(self, unit: str = "samples"):
        super().__init__(table_column=Column(no_wrap=True))
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.speed
        if not speed or speed <= 0:
            return Text("")
        digits = 0 if speed >= 100 else 1 if speed >= 10 else 2
        return Text(f"{speed:.{digits}f} {task.fields.get('unit', self.unit)}/s")


class TimeRemaining(TimeRemainingColumn):
    """``eta`` and rich's estimate, unknown (``-:--:--``) while the rate is not positive instead of a negative
    time; once the task is finished, ``in`` and the time it took."""

    def __init__(self):
        super().__init__(table_column=Column(no_wrap=True))

    def render(self, task) -> Text:
        if task.finished and task.finished_time is not None:
            return Text(f"in {timedelta(seconds=int(task.finished_time))}", style="progress.elapsed")
        if task.speed is not None and task.speed <= 0:
            return Text("eta -:--:--", style="progress.remaining")
        return Text("eta ") + super().render(task)


def progress_bar(console: Console, unit: str = "samples", transient: bool = False) -> Progress:
    """A Progress on ``console`` whose rate column counts ``unit`` (samples, steps, images...); a
    ``transient`` one is erased when it stops (a command whose result line follows, or whose error
    must stay one line)."""
    return Progress(TextColumn("{task.description}", table_column=Column(no_wrap=True)),
                    BarColumn(bar_width=None), MofNCompleteColumn(table_column=Column(no_wrap=True)),
                    ItemsPerSecond(unit), TimeRemaining(), console=console, transient=transient, expand=True)
