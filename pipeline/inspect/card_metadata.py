"""The dataset card's YAML front matter: what the Hugging Face Hub and ``datasets`` read from README.md.

``configs`` points ``datasets.load_dataset(OUT)`` at the shards (the webdataset builder, one ``train``
split), so it never picks up the manifest or the grounding record; the licence is the one the models'
outputs come under; ``id2label`` names the class ids of ``seg.png``.
"""

from __future__ import annotations

import yaml

from pipeline.dataset.layout import DATA_DIR
from stages.metrics import IGNORE_INDEX

# The licence of the data a preset's models make (the Hub's id, and a name for `other`). SD 1.5's
# CreativeML OpenRAIL-M covers its outputs, with its use restrictions; the tiny and world presets'
# models are built here, from random or offline-trained weights, so no model licence binds theirs.
LICENCES = {"sd15": ("creativeml-openrail-m", None),
            "tiny": ("other", "datagen-tiny-random-weights"),
            "world": ("other", "datagen-world-offline-models")}
UNKNOWN_LICENCE = ("unknown", None)  # a preset file of the user's: its models' licences are not known here


def _size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` samples."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def front_matter(name: str, preset_name: str, classes: list[dict], written: int) -> str:
    """The card's front matter (between ``---`` lines) for a dataset of ``written`` samples."""
    licence, licence_name = LICENCES.get(preset_name, UNKNOWN_LICENCE)
    id2label = {0: "background", **{c["id"]: c["name"] for c in classes}, IGNORE_INDEX: "ignore"}
    meta = {"pretty_name": f"datagen dataset {name}", "license": licence,
            **({"license_name": licence_name} if licence_name else {}),
            "task_categories": ["image-segmentation"], "task_ids": ["semantic-segmentation"],
            "tags": ["synthetic", "webdataset", "datagen"], "size_categories": [_size_category(written)],
            "configs": [{"config_name": "default",
                         "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.tar"}]}],
            "id2label": id2label}
    return f"---\n{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---\n"
