"""detectron2 for tests: whether it is installed, the skip mark where it is not, a small Mask R-CNN
config and random checkpoints that behave.

detectron2 is not on PyPI; CI installs a CPU build of it from ``../shared/wheels`` (``.ci/run``).
Its tests skip where it is not installed, and only there: an installed but broken detectron2 fails,
and where CI installed it (``DATAGEN_REQUIRE_DETECTRON2=1``) a missing one fails them too.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

REQUIRED_ENV = "DATAGEN_REQUIRE_DETECTRON2"  # set by .ci/run where it installed detectron2


def detectron2_mark(installed: bool, environ: Mapping[str, str]) -> pytest.MarkDecorator:
    """Skip a test where detectron2 is not installed, unless ``REQUIRED_ENV`` is 1: then the test runs
    (and fails on the missing import)."""
    return pytest.mark.skipif(
        not installed and environ.get(REQUIRED_ENV) != "1",
        reason="detectron2 is not installed (not on PyPI: CI installs the wheel in ../shared/wheels, "
               "docs/oracle.md says how elsewhere)")


INSTALLED = importlib.util.find_spec("detectron2") is not None
needs_detectron2 = detectron2_mark(INSTALLED, os.environ)

MODEL_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"


def write_small_config(folder: Path, input_size: int = 64) -> Path:
    """The model zoo's R50-FPN Mask R-CNN config shrunk for CPU tests: ResNet-18, 64-channel FPN and
    heads, 50 proposals per image, tested at ``input_size``; group norm in the backbone and FPN, so
    random weights give features of a sane scale (frozen batch norm's identity lets them grow)."""
    from stages.oracle import import_detectron2_backend

    path = folder / "mask_rcnn_small.yaml"
    path.write_text(f"""_BASE_: "{import_detectron2_backend().config_file(MODEL_ZOO_CONFIG)}"
MODEL:
  RESNETS: {{DEPTH: 18, RES2_OUT_CHANNELS: 64, NORM: GN}}
  FPN: {{OUT_CHANNELS: 64, NORM: GN}}
  RPN: {{PRE_NMS_TOPK_TEST: 200, POST_NMS_TOPK_TEST: 50}}
  ROI_BOX_HEAD: {{FC_DIM: 256}}
  ROI_MASK_HEAD: {{CONV_DIM: 64}}
INPUT: {{MIN_SIZE_TEST: {input_size}, MAX_SIZE_TEST: {input_size}}}
""")
    return path


def predict_class(predictor, index: int) -> None:
    """Make a box predictor (torchvision's or detectron2's: ``cls_score`` and ``bbox_pred`` layers)
    give every proposal category ``index`` with a score near 1 and keep the proposal's box, whatever
    the (random) features: the logits are then the biases alone."""
    with torch.no_grad():
        for layer in (predictor.cls_score, predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()
        predictor.cls_score.bias[index] = 20.0


def spread_classes(model) -> None:
    """Make a random detectron2 Mask R-CNN's detections spread over the categories: all (proposal,
    category) pairs score the same, proposals are the anchors and boxes the proposals. Random logits
    would not do: a random network's features point the same way in every box, so the same few
    categories win everywhere (6 of VOC's 20 found per image, against all 20 here)."""
    predictor, rpn = model.roi_heads.box_predictor, model.proposal_generator.rpn_head
    with torch.no_grad():
        for layer in (predictor.cls_score, predictor.bbox_pred, rpn.anchor_deltas):
            layer.weight.zero_()
            layer.bias.zero_()


def random_checkpoint(config: Path, path: Path, seed: int = 0) -> Path:
    """A seeded random checkpoint (.pth) of ``config``'s model, its detections spread (``spread_classes``)."""
    from stages.oracle import import_detectron2_backend

    d2 = import_detectron2_backend()
    torch.manual_seed(seed)
    model = d2.build_detectron2_model(d2.load_config(str(config)))
    spread_classes(model)
    torch.save({"model": model.state_dict()}, path)
    return path
