"""ZS3 metrics: IoU from one confusion matrix over the whole set, seen/unseen means, hIoU."""

import numpy as np
import pytest
import torch

from stages.metrics import class_iou, confusion_matrix, harmonic_mean, zs3_scores


def test_hand_built_matrix():
    # rows = ground truth, columns = prediction
    conf = np.array([[50, 5, 5],
                     [10, 20, 0],
                     [0, 10, 30]])
    # IoU_c = TP / (row + column - TP)
    expected = [50 / (60 + 60 - 50), 20 / (30 + 35 - 20), 30 / (40 + 35 - 30)]
    np.testing.assert_allclose(class_iou(conf), expected)
    scores = zs3_scores(conf, [True, True, False])
    assert scores["miou_seen"] == pytest.approx((expected[0] + expected[1]) / 2)
    assert scores["miou_unseen"] == pytest.approx(expected[2])
    s, u = scores["miou_seen"], scores["miou_unseen"]
    assert scores["hiou"] == pytest.approx(2 * s * u / (s + u))
    assert scores["pixel_accuracy"] == pytest.approx(100 / 130)


def test_classes_absent_from_ground_truth_are_left_out_of_the_means():
    conf = np.array([[8, 0, 2, 0],
                     [0, 6, 0, 0],
                     [0, 0, 0, 0],    # class 2: no GT pixel, but 2 pixels predicted as it
                     [0, 0, 0, 0]])   # class 3: neither in GT nor predicted
    scores = zs3_scores(conf, [True, True, False, False])
    assert scores["iou"][2] is None and scores["iou"][3] is None
    assert scores["iou"][0] == pytest.approx(0.8)  # the false positives still cost the true class
    assert scores["miou_seen"] == pytest.approx((0.8 + 1.0) / 2)
    assert scores["miou_unseen"] is None and scores["hiou"] is None
    assert scores["miou"] == pytest.approx(0.9)


def test_harmonic_mean_edges():
    assert harmonic_mean(0.5, 0.25) == pytest.approx(1 / 3)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(0.7, 0.0) == 0.0
    assert harmonic_mean(None, 0.3) is None


def test_accumulated_matrix_matches_an_independent_pixel_count_and_is_not_a_per_image_mean():
    rng = np.random.default_rng(0)
    k = 5
    images = []
    for _ in range(6):
        shape = tuple(rng.integers(5, 20, 2))
        target = rng.integers(0, k, shape)
        target[rng.random(shape) < 0.1] = 255
        pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, k, shape)) % k
        images.append((pred, target))
    conf = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), k) for p, t in images)
    assert int(conf.sum()) == sum(int((t != 255).sum()) for _, t in images)
    # independent: intersections and unions as boolean pixel sets, summed over images
    inter, union = np.zeros(k), np.zeros(k)
    for pred, target in images:
        valid = target != 255
        for c in range(k):
            inter[c] += ((pred == c) & (target == c) & valid).sum()
            union[c] += (((pred == c) | (target == c)) & valid).sum()
    np.testing.assert_allclose(class_iou(conf.numpy()), inter / union)
    per_image = np.mean([np.nanmean(class_iou(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), k).numpy()))
                         for p, t in images])
    assert zs3_scores(conf.numpy(), [True] * k)["miou"] != pytest.approx(per_image)


def test_unknown_ground_truth_label_is_an_error():
    with pytest.raises(ValueError, match="label 7"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 7, 255]), 3)
