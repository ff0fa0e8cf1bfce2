"""The ``datagen`` application: the command groups every command module registers on, and the console."""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Synthetic semantic segmentation datasets from Stable Diffusion (Grounded Diffusion).")
eval_app = typer.Typer(help="Evaluate the grounding module or the dataset.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
console = Console(stderr=True, soft_wrap=True)  # messages and bars; stdout carries the JSON results


def _print_version(asked: bool) -> None:
    if asked:
        print(f"datagen {version('datagen')}")
        raise typer.Exit()


@app.callback()
def _options(show_version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                        help="Print datagen's version and exit.")] = False):
    """Synthetic semantic segmentation datasets from Stable Diffusion (Grounded Diffusion)."""
