"""The oracle: labels generated images for the classes their prompts name (``base.Oracle``), with a
Mask R-CNN from one of two backends: torchvision's (the default; it installs everywhere) or
detectron2's (optional; its model zoo, the LSJ baselines, ViTDet)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from types import ModuleType

import torch

from stages.oracle.base import Candidates, Detection, Oracle, OracleBackendError, detector_label_ids
from stages.oracle.torchvision_backend import (
    COCO_DETECTOR_CATEGORIES,
    COCO_INPUT_SIZE,
    COCO_WEIGHTS,
    TorchvisionOracle,
    build_maskrcnn,
    build_small_maskrcnn,
    coco_weights_path,
    detector_categories,
    load_maskrcnn,
    save_detector,
)
from stages.vocab import Vocabulary

__all__ = ["BACKENDS", "COCO_DETECTOR_CATEGORIES", "COCO_INPUT_SIZE", "COCO_WEIGHTS", "Candidates", "Detection",
           "Oracle", "OracleBackendError", "TorchvisionOracle", "build_maskrcnn", "build_small_maskrcnn",
           "coco_weights_path", "detector_categories", "detector_label_ids", "import_detectron2_backend",
           "load_maskrcnn", "load_oracle", "save_detector"]

BACKENDS = ("torchvision", "detectron2")
DETECTRON2_INSTALL = ("pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
                      "and pip install 'datagen[detectron2]'")


def import_detectron2_backend() -> ModuleType:
    """``stages.oracle.detectron2_backend``, or OracleBackendError (one line) where detectron2 or one
    of its runtime dependencies cannot be imported. Its import-time deprecation warnings (pkg_resources,
    torch.jit.script) are detectron2's business, not the user's."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            warnings.filterwarnings("ignore", ".*torch.jit.script.* is deprecated", FutureWarning)
            module = importlib.import_module("stages.oracle.detectron2_backend")
    except ImportError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OracleBackendError(f"the detectron2 oracle backend needs detectron2, which cannot be imported here "
                                 f"({reason}): {DETECTRON2_INSTALL}") from err
    return module


def load_oracle(backend: str, weights: str | Path | None, vocab: Vocabulary, *, config: str | None = None,
                input_size: int | None, score_threshold: float, device: str | torch.device = "cpu") -> Oracle:
    """The oracle of ``backend`` on the run's device. torchvision: ``weights`` as ``load_maskrcnn`` takes
    them, its input resized to ``input_size``; detectron2: ``config`` (model-zoo name or file) and a
    .pkl/.pth checkpoint, its input resized as the config's test loader does unless ``input_size`` is set."""
    if backend == "detectron2":
        return import_detectron2_backend().load_detectron2_oracle(
            config, weights, vocab, input_size, score_threshold=score_threshold, device=device)
    if backend != "torchvision":
        raise OracleBackendError(f"unknown oracle backend '{backend}': not one of {', '.join(BACKENDS)}")
    model = load_maskrcnn(input_size, weights, box_score_thresh=score_threshold)
    return TorchvisionOracle(model, vocab, score_threshold=score_threshold, device=device,
                             categories=detector_categories(weights))
