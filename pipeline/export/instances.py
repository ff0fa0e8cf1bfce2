"""Per-object instances of a class-id mask: the connected components of each class's pixels.

Phase C's labelers write one mask per class; COCO wants one annotation per object. A component is
8-connected (pixels touching at a corner are one object), so objects of one class that touch are one
instance. Ignore pixels (255) and background (0) are never part of an instance.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from pipeline.dataset.samples import rle

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def objects(seg: np.ndarray, class_ids: list[int]) -> Iterator[tuple[int, dict]]:
    """(class id, COCO annotation fields) for each component of each class in ``class_ids``, in class id
    order and then in raster order of each component's first pixel: ``segmentation`` (RLE, ASCII
    counts), ``area`` (pixels), ``bbox`` ([x, y, width, height], the pixels' tight box) and ``iscrowd`` 0."""
    for class_id in sorted(set(class_ids)):
        labels, count = ndimage.label(seg == class_id, structure=EIGHT_CONNECTED)
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        for k, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
            box = [float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start)]
            yield class_id, {"segmentation": rle(labels == k), "area": int(areas[k]), "bbox": box, "iscrowd": 0}
