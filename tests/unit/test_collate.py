"""``reader.collate`` batches training samples whose metas differ in shape (issue 26: PyTorch's default
collation fails on them, so README's DataLoader crashed at batch_size=16)."""

import pytest
import torch
from torch.utils.data import default_collate

from pipeline.dataset.reader import collate


def _sample(value: int, instances: int):
    meta = {"prompt": "a photograph of a dog", "instances": [{"class_id": 12, "score": 0.5}] * instances}
    return torch.full((3, 4, 4), value, dtype=torch.uint8), torch.full((4, 4), value, dtype=torch.int64), meta


def test_collate_stacks_images_and_masks_and_keeps_each_meta():
    batch = [_sample(1, 0), _sample(2, 2)]
    images, masks, metas = collate(batch)
    assert images.shape == (2, 3, 4, 4) and images.dtype == torch.uint8 and images[1].eq(2).all()
    assert masks.shape == (2, 4, 4) and masks.dtype == torch.int64 and masks[0].eq(1).all()
    assert metas == [batch[0][2], batch[1][2]]
    with pytest.raises(RuntimeError, match="equal size"):  # why datagen's collate exists
        default_collate(batch)
