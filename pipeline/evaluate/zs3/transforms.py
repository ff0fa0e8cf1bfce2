"""Image + mask preparation: random scale, crop and flip for training (torchvision transforms v2),
normalisation for both. Masks are resized with nearest neighbour and padded with 255 (ignored)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pipeline.evaluate.zs3.config import SegmenterPreset
from stages.metrics import IGNORE_INDEX
from stages.segmenter import MEAN, STD

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def _pair(image: np.ndarray, mask: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    return (tv_tensors.Image(torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(np.require(mask, requirements=("C", "W")))))


def _finish() -> list:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(MEAN, STD)]


def train_transform(preset: SegmenterPreset) -> Transform:
    """(H, W, 3) uint8 image + (H, W) uint8 mask -> augmented (3, c, c) float and (c, c) long tensors."""
    low, high = preset.scale_range
    steps = v2.Compose([
        v2.RandomResize(max(1, round(low * preset.base_size)), max(2, round(high * preset.base_size) + 1)),
        v2.RandomCrop(preset.crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
        v2.RandomHorizontalFlip(),
        *_finish(),
    ])

    def apply(image: np.ndarray, mask: np.ndarray):
        image, mask = steps(*_pair(image, mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    return apply


def eval_transform() -> Transform:
    """The whole image, normalised; the mask untouched."""
    steps = v2.Compose(_finish())

    def apply(image: np.ndarray, mask: np.ndarray):
        image, mask = steps(*_pair(image, mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()

    return apply
