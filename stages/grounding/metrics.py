"""Intersection-over-union bookkeeping for the grounding module (validation mIoU and Protocol I)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from stages.label import masks_from_probabilities, semantic_mask

BACKGROUND = "background"


class IoU:
    """Per-class intersection and union summed over images; IoU = sum(inter) / sum(union)."""

    def __init__(self):
        self.intersection: Counter = Counter()
        self.union: Counter = Counter()

    def add(self, name: str, predicted: np.ndarray, target: np.ndarray) -> None:
        self.intersection[name] += int((predicted & target).sum())
        self.union[name] += int((predicted | target).sum())

    def per_class(self) -> dict[str, float]:
        """IoU of every class that appeared in a target or a prediction."""
        return {n: self.intersection[n] / u for n, u in sorted(self.union.items()) if u > 0}

    def mean(self, names=None) -> float | None:
        """Mean IoU over ``names`` (default: every class, background included); None when none appeared."""
        ious = self.per_class()
        chosen = [ious[n] for n in (ious if names is None else names) if n in ious]
        return float(np.mean(chosen)) if chosen else None


def add_predictions(iou: IoU, probs: torch.Tensor, batch: dict) -> None:
    """Accumulate one batch: probabilities (B, K, H, W) against ``targets``/``has_target``.

    Predictions become one semantic map per image exactly as the labeller makes them (threshold 0.5,
    overlaps to the most probable class); the target map holds the classes that have a target. A
    class without a target (the oracle did not find it) is not scored, but pixels predicted for it
    still count against background. Pixels in ``ignore`` (when the batch has it) are not scored.
    """
    probs = probs.float().cpu()
    for b, names in enumerate(batch["names"]):
        k = len(names)
        local = list(range(1, k + 1))
        predicted = semantic_mask(masks_from_probabilities(probs[b, :k], local, list(names)), tuple(probs.shape[-2:]))
        targets = batch["targets"][b, :k].bool().numpy()
        has = batch["has_target"][b, :k].numpy()
        truth = np.zeros(predicted.shape, np.uint8)
        for j in range(k):
            if has[j]:
                truth[targets[j]] = j + 1
        keep = ~batch["ignore"][b].numpy() if "ignore" in batch else np.ones(predicted.shape, bool)
        iou.add(BACKGROUND, (predicted == 0) & keep, (truth == 0) & keep)
        for j, name in enumerate(names):
            if has[j]:
                iou.add(name, (predicted == j + 1) & keep, (truth == j + 1) & keep)
