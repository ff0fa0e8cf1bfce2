"""Grounding predictions -> semantic mask and per-class instances."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stages.metrics import IGNORE_INDEX

BACKGROUND = 0


@dataclass
class ClassMask:
    class_id: int
    name: str
    mask: np.ndarray  # bool (H, W)
    score: float  # mean probability inside the mask


@dataclass
class SampleLabels:
    """A labeler's answer for one sample."""

    masks: list[ClassMask]  # disjoint, one per class that has pixels
    uncertain: np.ndarray | None = None  # bool (H, W): pixels written as ignore (255) and never scored
    stats: dict = field(default_factory=dict)  # per-sample figures kept in its json (``labeler_stats``)

    def segmentation(self, shape: tuple[int, int]) -> np.ndarray:
        """uint8 (H, W): class ids, 0 for background, 255 for the uncertain pixels."""
        seg = semantic_mask(self.masks, shape)
        if self.uncertain is not None:
            seg[self.uncertain] = IGNORE_INDEX
        return seg


def masks_from_probabilities(probs: torch.Tensor, class_ids: list[int], names: list[str],
                             threshold: float | list[float] = 0.5, min_pixels: int = 1) -> list[ClassMask]:
    """Per class: pixels where its probability passes ``threshold`` (one for all, or one per class) and
    beats the other classes.

    ``probs`` is (K, H, W) for the K classes named in one prompt. Overlaps go to the most probable
    class, so the masks are disjoint and form one semantic map. Classes with fewer than
    ``min_pixels`` pixels are dropped.
    """
    probs = probs.float()
    winner = probs.argmax(0)
    result = []
    thresholds = threshold if isinstance(threshold, list) else [threshold] * len(class_ids)
    for k, (class_id, name) in enumerate(zip(class_ids, names)):
        mask = ((winner == k) & (probs[k] > thresholds[k])).cpu().numpy()
        if mask.sum() >= min_pixels:
            result.append(ClassMask(class_id, name, mask, float(probs[k].cpu().numpy()[mask].mean())))
    return result


def semantic_mask(masks: list[ClassMask], shape: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W): the class id of each pixel, 0 for background."""
    seg = np.full(shape, BACKGROUND, dtype=np.uint8)
    for m in masks:
        seg[m.mask] = m.class_id
    return seg


def missing_classes(masks: list[ClassMask], prompted: list[str], min_fraction: float) -> list[str]:
    """The prompted classes whose mask is absent or covers less than ``min_fraction`` of the image.

    Such a sample would write an object the prompt asked for as background, the worst label a
    training set can hold, so phase C filters it instead."""
    covered = {m.name: m.mask.mean() for m in masks}
    return [name for name in prompted if name not in covered or covered[name] < min_fraction]
