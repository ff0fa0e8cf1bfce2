"""`datagen export coco`'s parts: objects are the 8-connected components of each class's pixels (or the
oracle's instances, checked), and category ids are COCO's where every class is a COCO category."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipeline.dataset.samples import rle
from pipeline.export.categories import category_ids
from pipeline.export.instances import objects, oracle_objects
from stages.errors import ConfigError, DataError


def test_each_connected_blob_of_a_class_is_one_object_and_ignore_pixels_are_none():
    seg = np.zeros((6, 8), dtype=np.uint8)
    seg[0:2, 0:2] = 3       # a 2x2 blob of class 3
    seg[2, 2] = 3           # touches it at a corner only: the same object (8-connected)
    seg[4:6, 5:8] = 3       # a second blob of class 3, apart
    seg[0, 6] = 7           # one pixel of class 7
    seg[5, 0:3] = 255       # ignore: never an instance
    found = list(objects(seg, [7, 3, 3]))
    assert [class_id for class_id, _ in found] == [3, 3, 7]  # class id order, then raster order
    assert [(a["area"], a["bbox"], a["iscrowd"]) for _, a in found] == [
        (5, [0.0, 0.0, 3.0, 3.0], 0), (6, [5.0, 4.0, 3.0, 2.0], 0), (1, [6.0, 0.0, 1.0, 1.0], 0)]
    masks = [mask_utils.decode(dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())) for _, a in found]
    assert masks[0].sum() + masks[1].sum() == (seg == 3).sum() and ((masks[0] + masks[1]) == (seg == 3)).all()
    assert (masks[2] == (seg == 7)).all() and not any(m[seg == 255].any() for m in masks)
    assert [a["bbox"] for _, a in found] == [mask_utils.toBbox(dict(a["segmentation"], counts=a["segmentation"]
                                                                    ["counts"].encode())).tolist() for _, a in found]


def test_a_class_without_pixels_has_no_object():
    assert list(objects(np.zeros((4, 4), dtype=np.uint8), [1, 2])) == []


def test_the_oracles_instances_are_objects_with_their_masks_tight_box():
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:6] = True
    mask[4, 6] = True
    stored = {"class_id": 4, "name": "cat", "score": 0.9, "area": 9, "segmentation": rle(mask),
              "bbox_xyxy": [1.5, 0.5, 6.2, 4.9]}  # the detector's box: not the mask's
    [(class_id, fields)] = oracle_objects([stored], [4, 9], 5, 7)
    assert (class_id, fields["area"], fields["bbox"], fields["iscrowd"]) == (4, 9, [2.0, 1.0, 5.0, 4.0], 0)
    assert fields["segmentation"] == stored["segmentation"]
    with pytest.raises(DataError, match="instance 0 is of class 5 at size \\[5, 7\\], not one of the sample's"):
        list(oracle_objects([dict(stored, class_id=5)], [4, 9], 5, 7))
    with pytest.raises(DataError, match="at size \\[5, 7\\], not one of the sample's classes \\[4\\] at the "
                                        "image's \\[7, 5\\]"):
        list(oracle_objects([stored], [4], 7, 5))
    with pytest.raises(DataError, match="instance 0 has no class_id and RLE segmentation"):
        list(oracle_objects([{"class_id": 4, "segmentation": {"size": [5, 7], "counts": [1, 2]}}], [4], 5, 7))


def classes(*names, detector=None):
    return [{"id": i, "name": n, "seen": True, "detector_name": (detector or {}).get(n, n)}
            for i, n in enumerate(names, start=1)]


def test_voc_classes_take_cocos_ids_through_their_detector_names():
    voc = classes("aeroplane", "sofa", "tvmonitor", "person", detector={"aeroplane": "airplane", "sofa": "couch",
                                                                        "tvmonitor": "tv"})
    assert category_ids(voc, "auto") == ({1: 5, 2: 63, 3: 72, 4: 1}, "coco")
    assert category_ids(voc, "dataset") == ({1: 1, 2: 2, 3: 3, 4: 4}, "dataset")


def test_a_vocabulary_outside_coco_keeps_its_own_ids_and_coco_ids_are_refused():
    shapes = classes("circle", "person")
    assert category_ids(shapes, "auto") == ({1: 1, 2: 2}, "dataset")
    with pytest.raises(ConfigError, match="not COCO categories: circle; use --category-ids dataset"):
        category_ids(shapes, "coco")
    with pytest.raises(ConfigError, match="two classes are one COCO category"):
        category_ids(classes("tv", "tvmonitor", detector={"tvmonitor": "tv"}), "coco")
    with pytest.raises(ConfigError, match="must be one of auto, coco, dataset"):
        category_ids(shapes, "voc")
