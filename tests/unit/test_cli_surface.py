"""The command line's surface: progress bars that fit 80 columns, and quiet model libraries."""

import io

import pytest
from rich.console import Console

from pipeline.cli.progress import progress_bar

# Every description a command gives its bar, at its longest (the training bar shows its loss and mIoU).
BARS = [("A oracle bootstrap", 110000, "samples"), ("B train loss 0.123 mIoU 0.456", 20000, "steps"),
        ("C label (consensus)", 110000, "samples"), ("train annotated loss 0.123 mIoU 0.456", 20000, "steps"),
        ("training (loss 0.123)", 20000, "steps"), ("labels vs truth", 40504, "images")]


@pytest.mark.parametrize("description, total, unit", BARS)
def test_progress_bars_fit_80_columns_uncut(description, total, unit):
    clock = iter(float(t) for t in range(100))
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    progress = progress_bar(console, unit=unit)
    progress.get_time = lambda: next(clock)
    task = progress.add_task(description, total=total, unit=unit)
    progress.advance(task, 1)
    progress.advance(task, 12344)  # a fast rate: its widest text
    console.print(progress.get_renderable())
    line = console.file.getvalue().rstrip("\n")
    assert "…" not in line and "\n" not in line, line
    assert line.startswith(description) and f"12345/{total}" in line and f" {unit}/s eta " in line, line


def test_every_command_silences_the_model_libraries_before_its_body():
    """diffusers' and transformers' logs and loading bars would interleave with datagen's own bars."""
    import typer.main

    from pipeline.cli import QuietCommand, app

    def leaves(command):
        subs = getattr(command, "commands", None)
        return [leaf for sub in subs.values() for leaf in leaves(sub)] if subs else [command]

    commands = leaves(typer.main.get_command(app))
    assert len(commands) > 10 and all(isinstance(c, QuietCommand) for c in commands)
