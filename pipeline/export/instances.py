"""Per-object instances of a sample, as COCO annotation fields.

Phase C's labelers write one mask per class; COCO wants one annotation per object, so a class's pixels
are split into their connected components (``objects``). A component is 8-connected (pixels touching
at a corner are one object), so objects of one class that touch are one instance. Ignore pixels (255)
and background (0) are never part of an instance. Phase A's samples hold the oracle's instances, each
one detected object already (``oracle_objects``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from pipeline.dataset.samples import rle
from stages.errors import DataError

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


def oracle_objects(instances, class_ids: list[int], height: int, width: int) -> Iterator[tuple[int, dict]]:
    """(class id, COCO annotation fields) for each of the oracle's instances of a phase A sample, in its
    json's order: its RLE as stored, its ``area`` and ``bbox`` (the tight box of its mask, as
    ``objects`` gives them, not the detector's box) and ``iscrowd`` 0. DataError for an instance that
    is not a class of the sample with an RLE of the image's size."""
    if not isinstance(instances, list):
        raise DataError("json's instances are not a list")
    for i, entry in enumerate(instances):
        try:
            class_id, segmentation = entry["class_id"], entry["segmentation"]
            encoded = {"size": [int(v) for v in segmentation["size"]], "counts": segmentation["counts"].encode()}
        except (TypeError, KeyError, ValueError, AttributeError):
            raise DataError(f"json's instance {i} has no class_id and RLE segmentation (size, counts)") from None
        if class_id not in class_ids or encoded["size"] != [height, width]:
            raise DataError(f"json's instance {i} is of class {class_id!r} at size {encoded['size']}, not one of "
                            f"the sample's classes {sorted(class_ids)} at the image's {[height, width]}")
        yield class_id, {"segmentation": {"size": encoded["size"], "counts": segmentation["counts"]},
                         "area": int(mask_utils.area(encoded)),
                         "bbox": [float(v) for v in mask_utils.toBbox(encoded)], "iscrowd": 0}
