"""The ``datagen`` command line: one module per command group, all registered on ``app.app``.

Every user-facing error derives from ``stages.errors.DatagenError``; ``main`` prints it as one line
and exits with its code (2), so no command has to catch errors of its own. The command modules import
torch, diffusers and the rest in their command bodies, so `--help` is quick (tests/e2e/test_cli_help.py).
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand

from pipeline.cli import run, inspect, grounding, labels, zs3, world  # noqa: F401  # isort: skip - each registers its commands, in help order
from pipeline.cli import config_show  # noqa: F401  # isort: skip - registers `datagen config`
from pipeline.cli import export  # noqa: F401  # isort: skip - registers `datagen export`
from pipeline.cli.app import app, console
from stages.errors import DatagenError


class QuietCommand(TyperCommand):
    """A command that silences diffusers' and transformers' logs and download bars before its body runs
    (after its options are parsed: `--help` imports neither)."""

    def invoke(self, ctx):
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        return super().invoke(ctx)


def _quiet_commands(group: typer.Typer) -> None:
    for command in group.registered_commands:
        if command.cls in (None, TyperCommand):  # typer's default
            command.cls = QuietCommand
    for sub in group.registered_groups:
        _quiet_commands(sub.typer_instance)


_quiet_commands(app)


def main() -> None:
    try:
        app()
    except DatagenError as err:
        console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
