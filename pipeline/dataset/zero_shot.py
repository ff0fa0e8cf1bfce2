"""Whether labels are zero-shot: no unseen class was ever a training target of the grounding module
that made them.

Phase B trains on oracle shards of seen-class prompts: zero-shot by construction. `datagen
train-annotated` ignores (255) the unseen-class pixels of the real images unless it is given
``--train-on-unseen``; its checkpoint's record (``grounding/training.json``) says which with
``"zero_shot"``. A dataset's manifest keeps the status of the checkpoints that labelled it
(``"labels"``), and the dataset card, Protocol I and the ZS3 report state it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.dataset.checkpoint import training_record
from pipeline.dataset.layout import DATA_DIR, MANIFEST
from pipeline.dataset.location import is_remote, location, shard_location

LABELS = "labels"  # the manifest's entry: the labeler's provenance ({"labeler": name, "trained": bool, "details": its
#   description where it has one, "card": the card's text}), "zero_shot": bool | None, and for a labeler that uses
#   the trained checkpoint, "grounding": [the checkpoints that labelled the shards]
NOT_ZERO_SHOT = ("NOT zero-shot: the grounding module was trained with unseen classes as targets "
                 "(train-annotated --train-on-unseen), so its unseen-class labels and every unseen score "
                 "computed from them are not zero-shot")
UNKNOWN = "zero-shot status unknown: no record of what the grounding module was trained on"


def checkpoint_zero_shot(record: dict | None) -> bool | None:
    """A checkpoint's status from its training record; None without one, or one that does not say."""
    if record is None or "zero_shot" not in record:
        return None
    return bool(record["zero_shot"])


def combine(statuses) -> bool | None:
    """One status for labels from several sources: False if any is not zero-shot, None if any is unknown."""
    statuses = list(statuses)
    if False in statuses:
        return False
    return None if None in statuses or not statuses else True


def checkpoint_summary(record: dict | None) -> dict:
    """What the manifest keeps about a checkpoint that labelled shards."""
    keep = ("source", "root", "split", "train_on_unseen", "fingerprint")
    return {k: record[k] for k in keep if k in (record or {})} | {"zero_shot": checkpoint_zero_shot(record)}


def labels_entry(previous: dict | None, labeler: dict, record: dict | None, has_shards: bool) -> dict:
    """The manifest's ``labels`` once the labeler that ``labeler`` describes (``Labeler.provenance``) labels
    (more) shards. A labeler that needs no training (not ``trained``) had no class, seen or unseen, as a
    target: zero-shot by construction. Otherwise the checkpoint of ``record`` labels them, and shards
    labelled earlier (``has_shards``) keep their checkpoint: once not zero-shot, the dataset stays so."""
    if not labeler["trained"]:
        return labeler | {"zero_shot": True}
    labelled_by = list((previous or {}).get("grounding", [])) if has_shards else []
    summary = checkpoint_summary(record)
    if summary not in labelled_by:
        labelled_by.append(summary)
    return labeler | {"zero_shot": combine(c.get("zero_shot") for c in labelled_by), "grounding": labelled_by}


def dataset_zero_shot(folder: Path, manifest: dict | None = None) -> bool | None:
    """A datagen output folder's labels: its manifest's ``labels``, or before phase C recorded them, the
    checkpoint in the folder; None when neither says."""
    folder = location(folder)
    if manifest is None:
        try:
            manifest = json.loads((folder / MANIFEST).read_bytes())
        except (OSError, ValueError):
            manifest = {}
    labels = manifest.get(LABELS) if isinstance(manifest, dict) else None
    if isinstance(labels, dict) and "zero_shot" in labels:
        return labels["zero_shot"]
    return checkpoint_zero_shot(training_record(folder))


OTHER_SHARDS = "shards outside a datagen output folder"


def shards_zero_shot(urls: list[str]) -> dict[str, bool | None]:
    """Per datagen output folder of the given shards (``FOLDER/data/shard-*.tar`` beside
    ``FOLDER/manifest.json``, local or in an object store): its labels' status. Shards elsewhere (``pipe:``,
    http, or a folder without a manifest) are one entry, ``OTHER_SHARDS``: None, their labeller unknown."""
    found: dict[str, bool | None] = {}
    parents: set[str] = set()  # shard folders already looked at
    for url in urls:
        shard = shard_location(url)
        if shard is None:
            found[OTHER_SHARDS] = None
        elif str(shard.parent) not in parents:
            parent = shard.parent
            parents.add(str(parent))
            if parent.name == DATA_DIR and (parent.parent / MANIFEST).is_file():
                found[str(parent.parent if is_remote(parent) else parent.parent.resolve())] = \
                    dataset_zero_shot(parent.parent)
            else:
                found[OTHER_SHARDS] = None
    return found


def describe(zero_shot: bool | None) -> str:
    """One line for reports and cards."""
    if zero_shot is None:
        return UNKNOWN
    return "zero-shot: no unseen class was a training target" if zero_shot else NOT_ZERO_SHOT
