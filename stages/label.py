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


def batch_masks(probs: torch.Tensor, counts: list[int], threshold: float | torch.Tensor = 0.5,
                min_pixels: int = 1) -> list[list[tuple[int, np.ndarray, float]]]:
    """Per sample of a batch, (class index, bool mask, score) for each class whose pixels pass ``threshold``
    (one for all, or (B, K)) and beat the sample's other classes, ``min_pixels`` at least.

    ``probs`` is (B, K, H, W) on any device; sample b's classes are its first ``counts[b]`` (the rest is
    padding, never a winner). Masks and scores are decided where ``probs`` is and reach the host in one copy
    of bools (a quarter of the float probabilities) and one of per-class sums, whatever the batch.
    """
    batch, k = probs.shape[:2]
    own = torch.arange(k, device=probs.device)[None] < torch.tensor(counts, device=probs.device)[:, None]  # (B, K)
    probs = torch.where(own[..., None, None], probs.float(), -1.0)
    threshold = torch.as_tensor(threshold, dtype=torch.float32, device=probs.device).expand(batch, k)
    classes = torch.arange(k, device=probs.device)[None, :, None, None]
    masks = (probs.argmax(1, keepdim=True) == classes) & (probs > threshold[..., None, None])
    pixels = masks.sum((2, 3))
    sums = (probs * masks).sum((2, 3))
    masks, pixels, sums = masks.cpu().numpy(), pixels.cpu().numpy(), sums.cpu().numpy()
    return [[(c, masks[b, c], float(sums[b, c] / pixels[b, c])) for c in range(counts[b])
             if pixels[b, c] >= min_pixels] for b in range(batch)]


def masks_from_probabilities(probs: torch.Tensor, class_ids: list[int], names: list[str],
                             threshold: float | list[float] = 0.5, min_pixels: int = 1) -> list[ClassMask]:
    """Per class: pixels where its probability passes ``threshold`` (one for all, or one per class) and
    beats the other classes.

    ``probs`` is (K, H, W) for the K classes named in one prompt. Overlaps go to the most probable
    class, so the masks are disjoint and form one semantic map. Classes with fewer than
    ``min_pixels`` pixels are dropped.
    """
    thresholds = torch.tensor([threshold] if isinstance(threshold, list) else threshold, dtype=torch.float32)
    [found] = batch_masks(probs[None], [len(class_ids)], thresholds, min_pixels)
    return [ClassMask(class_ids[c], names[c], mask, score) for c, mask, score in found]


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
