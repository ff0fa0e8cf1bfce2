"""`datagen config show`: every setting of a preset and of a run, with its value, default and description.

The rows come from walking the pydantic models (``RunConfig``, ``Preset`` and the models nested in it), so
a field's ``description=`` is the one text for each setting: this command prints it and docs/configs.md
holds its markdown output (tests/unit/test_cli_docs.py checks that the two agree).
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.table import Table

from pipeline.cli.app import app

config_app = typer.Typer(help="The settings of presets and runs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

RUN_VALUE = "per run"  # the value column of run-level settings: flags, not preset keys
REGENERATE = "datagen config show sd15 --markdown"


@dataclass(frozen=True)
class Setting:
    name: str  # dotted: train.lr, attention.refine.power
    value: str
    default: str
    description: str


def _model_class(annotation) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``Model``, ``Model | None``), or None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (found := _model_class(arg)) is not None:
                return found
    return None


def _text(value) -> str:
    """A value as a preset file would spell it (JSON, strings bare)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        return value
    return json.dumps(value if not isinstance(value, tuple) else list(value))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "computed"
    return _text(field.default)


def walk(model: type[BaseModel], value: BaseModel | None, prefix: str = "", skip: tuple[str, ...] = ()) \
        -> list[Setting]:
    """One row per field of ``model``, nested models' fields dotted after their own row; ``value`` (an
    instance, or None for defaults only) gives the value column (``RUN_VALUE`` when None)."""
    rows = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        current = getattr(value, name) if value is not None else None
        rows.append(Setting(prefix + name, "" if isinstance(current, BaseModel) else
                            (_text(current) if value is not None else RUN_VALUE),
                            "" if isinstance(field.default, BaseModel) else _default(field),
                            field.description or ""))
        nested = _model_class(field.annotation)
        if nested is not None and isinstance(current, BaseModel):
            rows += walk(nested, current, f"{prefix}{name}.")
    return rows


def settings(preset_name: str) -> list[Setting]:
    """The run-level settings a user sets (flags), then every setting of the preset."""
    from pipeline.config import Preset, RunConfig, load_preset

    return walk(RunConfig, None, skip=("preset",)) + walk(Preset, load_preset(preset_name))


def markdown(preset_name: str) -> str:
    """The settings as a markdown table (what docs/configs.md holds for sd15)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def code(text: str) -> str:
        return f"`{text}`" if text else ""

    lines = [f"| setting | {preset_name} | default | description |", "|---|---|---|---|"]
    lines += [f"| `{s.name}` | {cell(s.value if s.value == RUN_VALUE else code(s.value))} | "
              f"{cell(code(s.default) if s.default not in ('required', 'computed') else s.default)} | "
              f"{cell(s.description)} |" for s in settings(preset_name)]
    return "\n".join(lines) + "\n"


@config_app.command("show")
def show(preset: Annotated[str, typer.Argument(help="Model preset: sd15, tiny, world, or a YAML file.")] = "sd15",
         as_markdown: Annotated[bool, typer.Option("--markdown", help="Print a markdown table (as in "
                                                                      "docs/configs.md) instead.")] = False):
    """Every setting of a run and of PRESET (nested ones dotted): its value, its default, what it does."""
    if as_markdown:
        print(markdown(preset), end="")
        return
    table = Table(title=f"settings of preset {preset} (run-level ones are set per run by flags)", expand=True)
    for column, ratio in (("setting", 2), (preset, 2), ("default", 1), ("description", 5)):
        table.add_column(column, ratio=ratio, overflow="fold")
    for s in settings(preset):
        table.add_row(s.name, s.value, s.default, s.description)
    Console(soft_wrap=False).print(table)
