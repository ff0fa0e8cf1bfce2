"""Grounding probabilities -> disjoint class masks -> the semantic seg.png."""

import numpy as np
import torch

from stages.label import masks_from_probabilities, semantic_mask


def test_overlaps_go_to_the_more_probable_class_and_low_probabilities_to_background():
    probs = torch.zeros(2, 4, 4)
    probs[0, :, :2] = 0.9          # "dog" on the left half
    probs[1, :, 1:3] = 0.7         # "cat" overlaps column 1, where dog is more probable
    probs[1, 0, 3] = 0.4           # below the threshold: background
    masks = masks_from_probabilities(probs, [12, 8], ["dog", "cat"])
    assert [(m.class_id, m.name) for m in masks] == [(12, "dog"), (8, "cat")]
    dog, cat = (m.mask for m in masks)
    assert dog[:, :2].all() and not dog[:, 2:].any()
    assert cat[:, 2].all() and not cat[:, [0, 1, 3]].any()
    assert abs(masks[0].score - 0.9) < 1e-6 and abs(masks[1].score - 0.7) < 1e-6
    seg = semantic_mask(masks, (4, 4))
    assert seg.dtype == np.uint8
    np.testing.assert_array_equal(seg, np.array([[12, 12, 8, 0]] * 4, dtype=np.uint8))


def test_classes_below_min_pixels_are_dropped():
    probs = torch.zeros(2, 4, 4)
    probs[0] = 0.8
    probs[1, 0, 0] = 0.95          # one pixel only
    names = [m.name for m in masks_from_probabilities(probs, [1, 2], ["a", "b"], min_pixels=2)]
    assert names == ["a"]
    assert masks_from_probabilities(torch.full((1, 4, 4), 0.2), [1], ["a"]) == []
