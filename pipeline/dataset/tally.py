"""What a shard's stats count of its samples: instances and pixel areas per class, background and ignore
pixels, image and mask sizes.

A run counts them from the arrays it encodes (``pipeline.run.workers``), so `datagen stats` and the card
add up sidecars instead of reading shards; ``add_sample`` counts the same from a sample's bytes, for
`datagen validate` to check them and for stats whose sidecar predates a count (``MASK_COUNTS``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.dataset.members import decode_json, decode_mask, open_image
from stages.metrics import IGNORE_INDEX

MASK_COUNTS = ("background_pixels", "ignore_pixels", "image_sizes", "mask_sizes")  # since the ignore count


def size_name(width: int, height: int) -> str:
    return f"{width}x{height}"


class Tally:
    """Counts over samples; ``counts()`` is what a shard's stats hold of them (``masks``: the samples have
    a class-id mask, phase C's)."""

    def __init__(self, masks: bool) -> None:
        self.masks = masks
        self.instances, self.pixels = Counter(), Counter()
        self.image_sizes, self.mask_sizes = Counter(), Counter()
        self.background = self.ignore = 0

    def add(self, instances: list[dict], image_size: tuple[int, int], mask: np.ndarray | None) -> None:
        """One sample: its json's instances, its image's (height, width), its class-id mask (None in phase A)."""
        for inst in instances:
            self.instances[inst["name"]] += 1
            self.pixels[inst["name"]] += inst["area"]
        self.image_sizes[size_name(image_size[1], image_size[0])] += 1
        if mask is not None:
            self.mask_sizes[size_name(mask.shape[1], mask.shape[0])] += 1
            self.background += int(np.count_nonzero(mask == 0))
            self.ignore += int(np.count_nonzero(mask == IGNORE_INDEX))

    def add_sample(self, sample: dict, image: str) -> None:
        """One sample as a shard holds it (``image``: its image member); the image's size from its header,
        the mask decoded. DataError where a member does not decode."""
        with open_image(sample[image], "the image") as header:
            size = header.height, header.width
        mask = decode_mask(sample["seg.png"]) if self.masks else None
        instances = decode_json(sample["json"]).get("instances", [])
        self.add([i for i in instances if isinstance(i, dict) and isinstance(i.get("name"), str)
                  and type(i.get("area")) is int] if isinstance(instances, list) else [], size, mask)

    def counts(self) -> dict:
        counts = {"class_instances": dict(sorted(self.instances.items())),
                  "class_pixels": dict(sorted(self.pixels.items())),
                  "image_sizes": dict(sorted(self.image_sizes.items()))}
        if self.masks:
            counts |= {"mask_sizes": dict(sorted(self.mask_sizes.items())), "background_pixels": self.background,
                       "ignore_pixels": self.ignore}
        return counts
