"""The grounding checkpoint in an output folder (``OUT/grounding``): whether it is whole, and its record."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.dataset.layout import GROUNDING_DIR, TRAINING_RECORD
from pipeline.dataset.location import is_remote, location, names
from stages.grounding.model import WEIGHTS_FILE


def grounding_installed(out) -> bool:
    """A grounding checkpoint is in ``OUT/grounding``: its weights, and on an object store its training
    record too, which is uploaded last (``atomic.replace_folder``): without it the upload was cut short."""
    present = names(out / GROUNDING_DIR)
    return WEIGHTS_FILE in present and (not is_remote(out) or TRAINING_RECORD in present)


def training_record(out: Path) -> dict | None:
    """``OUT/grounding/training.json``, None when there is none (or it cannot be read)."""
    try:
        record = json.loads((location(out) / GROUNDING_DIR / TRAINING_RECORD).read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
