"""The command line's surface: progress bars that fit 80 columns, and help that loads no models."""

import ast
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.cli.progress import progress_bar

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["eval", "grounding", "--help"]])
def test_help_imports_no_model_libraries(args):
    """`datagen --help` is quick because torch, diffusers, torchvision and ray are imported by command bodies."""
    shown = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; sys.argv = ['datagen', *sys.argv[1:]]\n"
         "try: runpy.run_module('pipeline.cli', run_name='__main__')\n"
         "except SystemExit: print(sorted(sys.modules), file=sys.stderr)", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Usage:" in shown.stdout, shown.stderr
    loaded = {name.split(".")[0] for name in ast.literal_eval(shown.stderr.strip().splitlines()[-1])}
    assert not loaded & {"torch", "diffusers", "transformers", "torchvision", "ray"}, loaded


def test_every_command_silences_the_model_libraries_before_its_body():
    """diffusers' and transformers' logs and loading bars would interleave with datagen's own bars."""
    import typer.main

    from pipeline.cli import QuietCommand, app

    def leaves(command):
        subs = getattr(command, "commands", None)
        return [leaf for sub in subs.values() for leaf in leaves(sub)] if subs else [command]

    commands = leaves(typer.main.get_command(app))
    assert len(commands) > 10 and all(isinstance(c, QuietCommand) for c in commands)
