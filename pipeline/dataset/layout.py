"""What an output folder holds, by name, and the phase vocabulary that names its parts.

    OUT/manifest.json   classes.json   README.md (the dataset card)
    OUT/oracle/         phase A's shards (seen classes, Mask R-CNN labels, latents)
    OUT/grounding/      phase B's checkpoint and its training record
    OUT/data/           phase C's shards: the dataset; the stats and wids index beside them are hidden files
    OUT/eval/           Protocol I's report (`datagen eval grounding`)
"""

from __future__ import annotations

from enum import StrEnum

FORMAT_VERSION = 1
MANIFEST, CLASSES, CARD = "manifest.json", "classes.json", "README.md"
ORACLE_DIR, GROUNDING_DIR, DATA_DIR = "oracle", "grounding", "data"
EVAL_DIR = "eval"  # Protocol I's report
RESUME_DIR = "grounding-resume"  # the latest resumable checkpoint of a training job in progress
TRAINING_RECORD = "training.json"  # beside the checkpoint: what it was trained on, losses, validation
WIDS_INDEX = ".index.wids.json"  # beside the shards: the wids shard list (urls relative to it); hidden,
LEGACY_WIDS_INDEX = "index.wids.json"  # as shard stats are, so data/ holds only shards (shards.stats_path)


class Phase(StrEnum):
    """The phases of a run, A → B → C. The value is what shard stats and prompt seeds record."""

    ORACLE = "oracle"
    TRAIN = "train"
    LABEL = "label"

    @property
    def letter(self) -> str:
        return {"oracle": "A", "train": "B", "label": "C"}[self.value]

    @property
    def command(self) -> str:
        """The ``datagen`` command that runs this phase alone."""
        return {"oracle": "generate", "train": "train", "label": "label"}[self.value]

    @property
    def folder(self) -> str:
        return {"oracle": ORACLE_DIR, "train": GROUNDING_DIR, "label": DATA_DIR}[self.value]


ALL_PHASES = frozenset(Phase)
