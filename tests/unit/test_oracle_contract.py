"""One contract for both oracle backends (stages/oracle/): the same images and requests in, the same
output types out, classes matched to the detector's categories by name, and no label where the
detector finds nothing. Each backend runs a real randomly initialised Mask R-CNN (detectron2's: the
model zoo's R50-FPN config) whose box predictor is set to answer one category, or none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2_fixtures import MODEL_ZOO_CONFIG, needs_detectron2, predict_class

from stages.oracle import COCO_DETECTOR_CATEGORIES, Detection, Oracle, load_oracle

IMAGE, INPUT = 48, 64  # the detectors resize 48-px images to 64 px; masks come back at 48
THRESHOLD = 0.05
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


class Backend:
    """A backend's oracle and how to make its detector answer one category (None: background only)."""

    def __init__(self, name: str, voc):
        torch.manual_seed(0)
        config = MODEL_ZOO_CONFIG if name == "detectron2" else None
        self.oracle = load_oracle(name, None, voc, config=config, input_size=INPUT, score_threshold=THRESHOLD)
        model = self.oracle.model
        if name == "torchvision":
            self.predictor, rpn_deltas = model.roi_heads.box_predictor, model.rpn.head.bbox_pred
            self.categories, self.background = COCO_DETECTOR_CATEGORIES, 0
        else:
            from detectron2.data import MetadataCatalog

            self.predictor, rpn_deltas = model.roi_heads.box_predictor, model.proposal_generator.rpn_head.anchor_deltas
            self.categories = tuple(MetadataCatalog.get("coco_2017_val").thing_classes)
            self.background = len(self.categories)  # detectron2's background is its last class
        with torch.no_grad():  # proposals = anchors: a random RPN's deltas make degenerate boxes
            rpn_deltas.weight.zero_()
            rpn_deltas.bias.zero_()

    def answer(self, category: str | None) -> Oracle:
        predict_class(self.predictor, self.background if category is None else self.categories.index(category))
        return self.oracle


@pytest.fixture(scope="module", params=["torchvision", pytest.param("detectron2", marks=needs_detectron2)])
def backend(request, voc) -> Backend:
    return Backend(request.param, voc)


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, IMAGE, IMAGE, 3), dtype=np.uint8)


def test_one_batched_pass_at_the_input_size_and_detections_at_image_size(backend):
    oracle = backend.answer("couch")
    seen = []
    hook = oracle.model.backbone.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    try:
        result = oracle.label(images(3), [["sofa", "dog"], ["tvmonitor", "sofa"], []])
    finally:
        hook.remove()
    assert seen == [(3, 3, INPUT, INPUT)]
    assert [list(r) for r in result] == [["sofa", "dog"], ["tvmonitor", "sofa"], []]
    assert result[0]["dog"] is None and result[1]["tvmonitor"] is None
    for sofa in (result[0]["sofa"], result[1]["sofa"]):
        assert isinstance(sofa, Detection)
        assert isinstance(sofa.mask, np.ndarray) and sofa.mask.dtype == bool and sofa.mask.shape == (IMAGE, IMAGE)
        assert isinstance(sofa.score, float) and THRESHOLD <= sofa.score <= 1
        x0, y0, x1, y1 = sofa.box
        assert all(isinstance(v, float) for v in sofa.box) and 0 <= x0 < x1 <= IMAGE and 0 <= y0 < y1 <= IMAGE
        rows, cols = np.nonzero(sofa.mask)  # the mask lies in its box
        assert rows.size == 0 or (y0 - 1 <= rows.min() and rows.max() <= y1 and x0 - 1 <= cols.min()
                                  and cols.max() <= x1)


@pytest.mark.parametrize("category, vocab_class", [("person", "person"), ("tv", "tvmonitor"), ("couch", "sofa")])
def test_classes_are_matched_by_the_detectors_category_names(backend, voc, category, vocab_class):
    """torchvision's COCO ids keep COCO's gaps (couch 63, tv 72), detectron2's do not (couch 57, tv 62):
    the class a detection belongs to comes from the category's name, so both find the same classes."""
    everything = [c.name for c in voc.classes]
    (result,) = backend.answer(category).label(images(1), [everything])
    assert [name for name, found in result.items() if found is not None] == [vocab_class]


def test_nothing_found_gives_no_labels(backend, voc):
    everything = [c.name for c in voc.classes]
    result = backend.answer(None).label(images(2), [everything, ["dog"]])
    assert result == [dict.fromkeys(everything), {"dog": None}]


def test_requests_are_checked_before_any_work(backend):
    oracle = backend.oracle
    assert oracle.label(images(0), []) == []
    with pytest.raises(ValueError, match="couch"):
        oracle.label(images(1), [["couch"]])  # a detector name, not a VOC class name
    with pytest.raises(ValueError, match="2 images"):
        oracle.label(images(2), [["dog"]])
