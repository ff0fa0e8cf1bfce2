"""The ``datagen`` command line: one module per command group, all registered on ``app.app``.

Every user-facing error derives from ``stages.errors.DatagenError``; ``main`` prints it as one line
and exits with its code (2), so no command has to catch errors of its own.
"""

from __future__ import annotations

import sys

from pipeline.cli import run, inspect, grounding, labels, zs3, world  # noqa: F401  # isort: skip - each registers its commands, in help order
from pipeline.cli import config_show  # noqa: F401  # isort: skip - registers `datagen config`
from pipeline.cli import export  # noqa: F401  # isort: skip - registers `datagen export`
from pipeline.cli.app import app, console
from stages.errors import DatagenError


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except DatagenError as err:
        console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
