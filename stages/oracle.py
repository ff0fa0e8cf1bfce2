"""Mask R-CNN oracle: labels generated images for the classes named in their prompts.

Grounded Diffusion's rule: the oracle mask of class c in a generated image is the top-scoring
Mask R-CNN instance of c; when the detector finds no instance of c, the image gets no label for c.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2

from stages.vocab import Vocabulary, VocabularyError
from stages.weights import WeightsMissingError, downloads_allowed

COCO_WEIGHTS = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
COCO_DETECTOR_CATEGORIES: tuple[str, ...] = tuple(COCO_WEIGHTS.meta["categories"])
_NOT_A_CLASS = ("__background__", "N/A")
COCO_INPUT_SIZE = 800  # the short side torchvision's COCO Mask R-CNN is trained and evaluated at


@dataclass(frozen=True)
class Detection:
    """One detected instance: a boolean HxW mask, its score and its xyxy box."""

    mask: np.ndarray
    score: float
    box: tuple[float, float, float, float]


def build_maskrcnn(image_size: int, box_score_thresh: float | None = None) -> MaskRCNN:
    """A randomly initialised COCO-sized Mask R-CNN (ResNet-50 FPN v2) that resizes its input to
    ``image_size`` (pass the image size to keep images at native size); masks come back at input size."""
    extra = {} if box_score_thresh is None else {"box_score_thresh": box_score_thresh}
    return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=len(COCO_DETECTOR_CATEGORIES),
                                    min_size=image_size, max_size=image_size, **extra)


def coco_weights_path() -> Path:
    """Where torch.hub's checkpoint cache keeps torchvision's COCO_V1 Mask R-CNN weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(COCO_WEIGHTS.url)


def _download_coco_weights(path: Path) -> bool:
    """Fetch torchvision's COCO_V1 checkpoint (hash-checked, atomic); False when that is impossible."""
    if not downloads_allowed():
        return False
    match = torch.hub.HASH_REGEX.search(path.name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a network that drops packets fails instead of hanging
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(COCO_WEIGHTS.url, str(path), hash_prefix=match and match.group(1))
        return True
    except (OSError, RuntimeError):  # no network (URLError, timeout), read-only cache, bad hash
        return False
    finally:
        socket.setdefaulttimeout(previous)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_maskrcnn(image_size: int, weights: str | Path | None, box_score_thresh: float | None = None) -> MaskRCNN:
    """Build the oracle detector in eval mode.

    ``weights``: None (random init, for tests), "COCO_V1" (torchvision's COCO weights from the
    torch.hub checkpoint cache, downloaded there once where downloads are allowed) or the path of a
    .pth / .safetensors state dict.
    """
    model = build_maskrcnn(image_size, box_score_thresh)
    if weights is not None:
        if weights == "COCO_V1":
            path = coco_weights_path()
            if not path.is_file() and not _download_coco_weights(path):
                raise WeightsMissingError(
                    f"Mask R-CNN weights {path.name} not found in {path.parent} and not downloadable here: "
                    f"download {COCO_WEIGHTS.url} to that folder, or pass a local state-dict path via "
                    "--oracle-weights")
        else:
            path = Path(weights).expanduser()
            if path.suffix not in (".pth", ".safetensors"):
                raise WeightsMissingError(f"oracle weights {path}: expected a .pth or .safetensors state dict")
            if not path.is_file():
                raise WeightsMissingError(f"oracle weights {path} do not exist (--oracle-weights)")
        try:
            state = _read_state_dict(path)
        except Exception as err:  # noqa: BLE001 - corrupt file: safetensors and pickle raise their own types
            raise WeightsMissingError(f"oracle weights {path} cannot be read: "
                                      f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
        try:
            model.load_state_dict(state)
        except RuntimeError as err:  # wrong architecture: torch lists every key, keep the first line
            raise WeightsMissingError(f"oracle weights {path} do not fit torchvision's Mask R-CNN ResNet-50 "
                                      f"FPN v2: {str(err).splitlines()[0]}") from err
    return model.eval()


def _detector_label_ids(vocab: Vocabulary) -> dict[str, int]:
    """Vocabulary class name -> the detector's label id for that class's COCO category.

    Unseen classes are mapped too (evaluation compares against the oracle on them); the pipeline
    keeps them out of the oracle's training data by never prompting for them in phase A.
    """
    coco_ids = {name: i for i, name in enumerate(COCO_DETECTOR_CATEGORIES) if name not in _NOT_A_CLASS}
    unknown = sorted({c.detector_name for c in vocab.classes} - coco_ids.keys())
    if unknown:
        raise VocabularyError(f"vocabulary {vocab.name}: detector names that are not COCO categories: {unknown}")
    return {c.name: coco_ids[c.detector_name] for c in vocab.classes}


def _top_detection(output: dict[str, torch.Tensor], label: int, score_threshold: float,
                   mask_threshold: float) -> Detection | None:
    """The top-scoring instance of ``label`` with score >= ``score_threshold`` in one image's output."""
    scores = torch.where(output["labels"] == label, output["scores"], -torch.inf)
    if scores.numel() == 0 or scores.max() < score_threshold:
        return None
    best = int(scores.argmax())
    return Detection(
        mask=(output["masks"][best, 0] > mask_threshold).cpu().numpy(),
        score=float(scores[best]),
        box=tuple(float(v) for v in output["boxes"][best]),
    )


class Oracle:
    """Labels each generated image with the top Mask R-CNN instance of each class its prompt names."""

    def __init__(self, model: nn.Module, vocab: Vocabulary, score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, device: str | torch.device = "cpu"):
        self.label_ids = _detector_label_ids(vocab)
        self.model = model.to(device).eval()
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.device = torch.device(device)

    @torch.inference_mode()
    def detect(self, images: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """One batched forward pass over uint8 (B, H, W, 3) images; torchvision's per-image outputs."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return self.model(list(batch))

    def label(self, images: np.ndarray, class_names: list[list[str]]) -> list[dict[str, Detection | None]]:
        """For each image, class name -> its top detection (None when the detector finds none)."""
        if len(images) != len(class_names):
            raise ValueError(f"{len(images)} images but {len(class_names)} class-name lists")
        if unknown := sorted({n for names in class_names for n in names} - self.label_ids.keys()):
            raise ValueError(f"class names not in the vocabulary: {unknown}")
        if not class_names:
            return []
        outputs = self.detect(images)
        return [
            {n: _top_detection(out, self.label_ids[n], self.score_threshold, self.mask_threshold) for n in names}
            for out, names in zip(outputs, class_names)
        ]
