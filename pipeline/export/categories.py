"""COCO category ids for a dataset's classes.

A class is a COCO category when its name, detector name or a synonym is one of COCO's 80 thing
names (case, spaces and punctuation ignored: VOC's "tvmonitor" is COCO's "tv" through its detector
name), with COCO's own ids (1..90, with COCO's gaps) from torchvision's COCO category list. Ids are
all COCO's or all the dataset's (the ``seg.png`` values 1..K), never a mix that could collide.
"""

from __future__ import annotations

from stages.errors import ConfigError
from stages.oracle.base import NOT_A_CLASS
from stages.oracle.torchvision_backend import COCO_DETECTOR_CATEGORIES
from stages.vocab import normalize

SCHEMES = ("auto", "coco", "dataset")
COCO_IDS = {normalize(name): i for i, name in enumerate(COCO_DETECTOR_CATEGORIES) if name not in NOT_A_CLASS}


def coco_id(entry: dict) -> int | None:
    """COCO's id of a manifest vocabulary class (``name``, ``detector_name``, ``synonyms``), None if none."""
    spellings = [entry["name"], entry.get("detector_name") or entry["name"], *(entry.get("synonyms") or [])]
    return next((COCO_IDS[normalize(s)] for s in spellings if normalize(s) in COCO_IDS), None)


def category_ids(vocabulary_classes: list[dict], scheme: str) -> tuple[dict[int, int], str]:
    """Dataset class id -> COCO category id, and the scheme used (``coco`` or ``dataset``).

    ``auto`` takes COCO's ids when every class is a distinct COCO category, else the dataset's;
    ``coco`` refuses (ConfigError naming them) classes that are not."""
    if scheme not in SCHEMES:
        raise ConfigError(f"--category-ids must be one of {', '.join(SCHEMES)}, not '{scheme}'")
    coco = {c["id"]: coco_id(c) for c in vocabulary_classes}
    unmapped = [c["name"] for c in vocabulary_classes if coco[c["id"]] is None]
    shared = len(set(coco.values())) < len(coco)
    if scheme == "dataset" or (scheme == "auto" and (unmapped or shared)):
        return {c["id"]: c["id"] for c in vocabulary_classes}, "dataset"
    if unmapped or shared:
        problem = f"classes that are not COCO categories: {', '.join(unmapped)}" if unmapped \
            else "two classes are one COCO category"
        raise ConfigError(f"--category-ids coco: {problem}; use --category-ids dataset (the seg.png ids)")
    return coco, "coco"
