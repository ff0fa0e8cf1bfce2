"""The command line documents itself: every option has help, `datagen config show` prints every setting
with its description, docs/configs.md holds that table as generated, `--version` works, and every relative
link of README.md and docs/*.md resolves."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cli.config_show import REGENERATE, markdown, settings

ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DOC = ROOT / "docs" / "configs.md"
BEGIN, END = "<!-- settings: begin (generated) -->", "<!-- settings: end -->"
MOVING = ("world",)  # Preset.world leaves for testbed/ (issue 23); it has no description here


def _commands(command, path: tuple[str, ...] = ()):
    """Every command under ``command`` (typer's click types: a group has ``commands``)."""
    yield path, command
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def test_every_command_option_and_argument_has_help():
    commands = list(_commands(typer.main.get_command(app)))
    assert {("run",), ("generate",), ("config", "show"), ("eval", "zs3")} <= {path for path, _ in commands}
    missing = [f"datagen {' '.join(path)}: {param.name}"
               for path, command in commands
               for param in command.params if not getattr(param, "help", None)]
    missing += [f"datagen {' '.join(path)}: no help text" for path, command in commands
                if path and not (command.help or command.short_help)]
    assert not missing, "options, arguments or commands without help:\n" + "\n".join(missing)


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"datagen {version('datagen')}"


@pytest.mark.parametrize("preset", ["sd15", "tiny"])
def test_config_show_lists_every_setting_with_a_description(preset):
    rows = {s.name: s for s in settings(preset)}
    for name in ("seed", "n", "labeler", "device", "image_size", "guidance.label", "train.lr", "attention.threshold",
                 "grounding.reduce_channels"):
        assert name in rows, name
    assert not [s.name for s in rows.values() if not s.description and not s.name.startswith(MOVING)]
    assert "preset" not in rows and "preset.sd" not in rows  # the preset's settings are listed at the top level


def test_config_show_values_and_defaults():
    rows = {s.name: s for s in settings("sd15")}
    assert (rows["train.lr"].value, rows["train.lr"].default) == ("1e-05", "required")
    assert (rows["attention.threshold"].value, rows["attention.threshold"].default) == ("0.6", "0.4")
    assert (rows["attention.refine.power"].value, rows["attention.refine.power"].default) == ("4", "4")
    assert (rows["seed"].value, rows["seed"].default) == ("per run", "0")
    assert rows["cache_dir"].default == "computed"  # never this machine's path
    tiny = {s.name: s for s in settings("tiny")}
    assert tiny["train.steps"].value == "4" and tiny["image_size"].value == "64"


def test_config_show_command():
    result = CliRunner().invoke(app, ["config", "show", "sd15", "--markdown"])
    assert result.exit_code == 0, result.output
    assert result.output == markdown("sd15")
    assert "| `train.lr` | `1e-05` | required | Adam learning rate" in result.output
    rich = CliRunner().invoke(app, ["config", "show"], env={"COLUMNS": "250"})  # sd15 is the default
    assert rich.exit_code == 0, rich.output
    assert "attention.refine.power" in rich.output and "Optimizer steps." in rich.output


def test_unknown_preset_is_one_line():
    result = CliRunner().invoke(app, ["config", "show", "no-such-preset"])
    assert result.exit_code != 0 and "no-such-preset" in str(result.exception)


def test_docs_settings_table_is_the_generated_one():
    text = CONFIGS_DOC.read_text()
    assert BEGIN in text and END in text, f"{CONFIGS_DOC} lost its markers {BEGIN} / {END}"
    checked_in = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert checked_in == markdown("sd15"), (
        f"docs/configs.md's settings table differs from `{REGENERATE}`: replace the lines between {BEGIN} and "
        f"{END} with that command's output")


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", _documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{doc.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 400, "README.md is for users: move detail to docs/"
