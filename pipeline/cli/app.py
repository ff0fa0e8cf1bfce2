"""The ``datagen`` application: the command groups every command module registers on, and the console."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Synthetic semantic segmentation datasets from Stable Diffusion (Grounded Diffusion).")
eval_app = typer.Typer(help="Evaluate the grounding module or the dataset.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
console = Console(stderr=True, soft_wrap=True)  # messages and bars; stdout carries the JSON results
