"""Per-class IoU of several labelers, over every image and apart by how many classes an image shows.

One-class images only ask whether a labeler finds the object; images with two classes (or more, on
annotated images) also ask whether it tells which object is which. Protocol I and labels-vs-truth
report both groups beside their overall numbers, which they leave unchanged.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from stages.grounding.metrics import IoU

GROUPS = ("one_class", "multi_class")


class GroupedIoU:
    """IoU per labeler and class, summed over every image and over each group of ``GROUPS``."""

    def __init__(self, labelers: tuple[str, ...]):
        self.overall = {name: IoU() for name in labelers}
        self.groups = {group: {name: IoU() for name in labelers} for group in GROUPS}
        self.images: Counter = Counter()

    def image(self, classes: int) -> str:
        """Count one image showing ``classes`` classes; the group its pairs are added to."""
        group = GROUPS[0] if classes == 1 else GROUPS[1]
        self.images[group] += 1
        return group

    def add(self, labeler: str, group: str, name: str, predicted: np.ndarray, target: np.ndarray) -> None:
        self.overall[labeler].add(name, predicted, target)
        self.groups[group][labeler].add(name, predicted, target)

    def by_group(self, seen: list[str], unseen: list[str]) -> dict:
        """Per group: its images and each labeler's mIoU of the seen and of the unseen classes."""
        return {group: {"images": self.images[group],
                        "scores": {name: {"miou_seen": iou.mean(seen), "miou_unseen": iou.mean(unseen)}
                                   for name, iou in ious.items()}}
                for group, ious in self.groups.items()}
