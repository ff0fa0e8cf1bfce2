"""Reading the YAML files a user gives (model presets, vocabularies): a mapping, or one line saying why not.

A file that is missing, binary, empty, not valid YAML, or holds a list or a scalar at its top is
refused with a ``DatagenError`` naming the file, never with the parser's multi-line report.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from stages.errors import DatagenError


def read_yaml_mapping(path: Path, what: str, error: type[DatagenError] = DatagenError) -> dict:
    """The mapping at the top of the YAML file ``path``, or ``error``; ``what`` names the file ('vocabulary')."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not a text file") from None
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise error(f"{what} {path} is not valid YAML ({_where(err)})") from err
    if not isinstance(raw, dict):
        held = "nothing" if raw is None else "a list" if isinstance(raw, list) else f"only {str(raw)[:40]!r}"
        raise error(f"{what} {path} holds {held}, not a mapping of settings (key: value lines)")
    return raw


def _where(err: yaml.YAMLError) -> str:
    """The parser's problem and its position, on one line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
