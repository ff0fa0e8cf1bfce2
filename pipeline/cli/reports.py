"""Evaluation reports are never overwritten by a run with other settings: before any work, a report file
that holds another vocabulary's, preset's, seed's, labelers', image count's or annotated folder's report
(or is no datagen report) is refused in one line (docs/evaluation.md). The same settings recompute the same
report, so a rerun replaces it."""

from __future__ import annotations

IDENTITY = ("vocab", "preset", "seed", "labelers", "images", "real")  # what a report says it was made with


def identity(report: dict) -> dict:
    """The settings a report was made with, and its class names (reports written before ``vocab`` was
    recorded still name their classes)."""
    found = {key: report[key] for key in IDENTITY if key in report}
    found["classes"] = [c.get("name") for c in report.get("classes", []) if isinstance(c, dict)]
    return found


def check_report(target, planned: dict) -> None:
    """Refuse ``target`` if it holds a report whose settings differ from ``planned`` (an ``identity``)."""
    from pipeline.dataset.shards import read_json_object
    from stages.errors import ConfigError

    if not target.exists():
        return
    remedy = "delete it, or pass --json to write this report elsewhere"
    try:
        theirs = identity(read_json_object(target))
    except ValueError as err:
        raise ConfigError(f"{target} is not a datagen report ({err}); {remedy}") from err
    for key, value in planned.items():
        if key in theirs and theirs[key] != value:
            raise ConfigError(f"{target} holds a report made with other settings ({key} {_shown(theirs[key])}, "
                              f"this run {_shown(value)}); {remedy}")


def _shown(value) -> str:
    if isinstance(value, list) and len(value) > 3:
        return f"{len(value)} classes, {', '.join(map(str, value[:3]))}, ..."
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)
