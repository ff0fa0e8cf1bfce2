"""Semantic segmentation metrics from one confusion matrix accumulated over a whole evaluation set.

IoU of class c = TP / (TP + FP + FN), with every count summed over all images first (never an
average of per-image scores). A class with no ground-truth pixel in the whole set has no IoU (NaN)
and is left out of every mean: its pixels predicted elsewhere are already counted as false negatives
of the true classes, so nothing is hidden, while a 0 for "predicted but absent" would only measure
which classes happen to be missing from a small set.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows are ground truth, columns predictions.

    Pixels whose target is ``ignore_index`` are skipped; any other target outside [0, num_classes)
    is an error (a label the vocabulary does not know).
    """
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long().to(target.device)
    valid = target != ignore_index
    target, pred = target[valid], pred[valid]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"ground truth holds label {int(target.max())}, outside 0..{num_classes - 1} and not "
                         f"{ignore_index}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_iou(conf: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-class IoU; NaN for classes absent from the ground truth."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    gt, predicted = conf.sum(axis=1), conf.sum(axis=0)
    union = gt + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    iou[gt == 0] = np.nan
    return iou


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """hIoU = 2ab / (a + b); 0 when both are 0; None when either is undefined."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def zs3_scores(conf: np.ndarray | torch.Tensor, seen: list[bool]) -> dict:
    """Seen mIoU, unseen mIoU, their harmonic mean (hIoU), overall mIoU and pixel accuracy.

    ``seen[i]`` says whether class i (row i of ``conf``) counts as seen; means skip absent classes.
    """
    conf = np.asarray(conf, dtype=np.float64)
    if conf.shape != (len(seen), len(seen)):
        raise ValueError(f"confusion matrix {conf.shape} does not match {len(seen)} classes")
    iou = class_iou(conf)
    seen_mask = np.asarray(seen, dtype=bool)
    miou_seen, miou_unseen = _mean(iou[seen_mask]), _mean(iou[~seen_mask])
    total = conf.sum()
    return {
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "miou_seen": miou_seen,
        "miou_unseen": miou_unseen,
        "hiou": harmonic_mean(miou_seen, miou_unseen),
        "miou": _mean(iou),
        "pixel_accuracy": float(np.trace(conf) / total) if total else None,
    }
