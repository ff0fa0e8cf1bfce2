"""The torchvision backend of the oracle: torchvision's Mask R-CNN (the default; it installs everywhere).

The detector's categories belong to its weights: COCO's 91 for torchvision's weights and any plain
state dict; a .safetensors file may name its own (``categories`` in its metadata, with
``architecture: small`` for ``build_small_maskrcnn``), as the miniature world's oracle does.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_V2_Weights, maskrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from stages.oracle.base import Candidates, Oracle
from stages.vocab import Vocabulary
from stages.weights import WeightsMissingError, downloads_allowed

COCO_WEIGHTS = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
COCO_DETECTOR_CATEGORIES: tuple[str, ...] = tuple(COCO_WEIGHTS.meta["categories"])
COCO_INPUT_SIZE = 800  # the short side torchvision's COCO Mask R-CNN is trained and evaluated at


def build_maskrcnn(image_size: int, box_score_thresh: float | None = None) -> MaskRCNN:
    """A randomly initialised COCO-sized Mask R-CNN (ResNet-50 FPN v2) that resizes its input to
    ``image_size`` (pass the image size to keep images at native size); masks come back at input size."""
    extra = {} if box_score_thresh is None else {"box_score_thresh": box_score_thresh}
    return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=len(COCO_DETECTOR_CATEGORIES),
                                    min_size=image_size, max_size=image_size, **extra)


def build_small_maskrcnn(categories: tuple[str, ...], image_size: int,
                         box_score_thresh: float | None = None) -> MaskRCNN:
    """torchvision's Mask R-CNN with a small backbone for small images (the miniature world's oracle).

    One stride-2 feature map whose dilated convolutions see the whole image; RPN and RoI heads sized
    for a few objects per image, so it trains on a CPU in minutes. ``categories[0]`` is the background.
    """
    def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                nn.GroupNorm(8, cout), nn.ReLU(inplace=True)]

    width = 64
    backbone = nn.Sequential(*block(3, 32), *block(32, 64, stride=2), *block(64, 64, dilation=2),
                             *block(64, width, dilation=4), *block(width, width, dilation=8))
    backbone.out_channels = width
    anchors = AnchorGenerator(sizes=((image_size // 5, image_size // 3, image_size // 2, image_size),),
                              aspect_ratios=((0.5, 1.0, 2.0),))
    extra = {} if box_score_thresh is None else {"box_score_thresh": box_score_thresh}
    return MaskRCNN(
        backbone, min_size=image_size, max_size=image_size, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=32,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        box_head=TwoMLPHead(width * 49, 256), box_predictor=FastRCNNPredictor(256, len(categories)),
        mask_head=MaskRCNNHeads(width, (64, 64), 1), mask_predictor=MaskRCNNPredictor(64, 64, len(categories)),
        **extra)


def save_detector(model: MaskRCNN, path: Path, categories: tuple[str, ...]) -> None:
    """Write a ``build_small_maskrcnn`` detector's weights with its categories in the file's metadata."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"architecture": "small", "categories": json.dumps(list(categories))})


def detector_categories(weights: str | Path | None) -> tuple[str, ...]:
    """The categories of the detector ``weights`` (see ``load_maskrcnn``): COCO's unless a
    .safetensors file names its own."""
    return tuple(json.loads(_metadata(weights).get("categories", "null")) or COCO_DETECTOR_CATEGORIES)


def _metadata(weights: str | Path | None) -> dict[str, str]:
    if weights is None or weights == "COCO_V1" or Path(weights).suffix != ".safetensors" \
            or not Path(weights).expanduser().is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(Path(weights).expanduser()), "pt") as f:
            return f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - a corrupt header raises safetensors' own error types
        raise WeightsMissingError(f"oracle weights {weights} cannot be read: {type(err).__name__}") from err


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
    if _metadata(weights).get("architecture") == "small":
        model = build_small_maskrcnn(detector_categories(weights), image_size, box_score_thresh)
    else:
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
            raise WeightsMissingError(f"oracle weights {path} do not fit torchvision's Mask R-CNN "
                                      f"{type(model.backbone).__name__}: {str(err).splitlines()[0]}") from err
    return model.eval()


class TorchvisionOracle(Oracle):
    """The oracle on a torchvision Mask R-CNN (``load_maskrcnn``); its categories are ``detector_categories``."""

    backend = "torchvision"

    def __init__(self, model: nn.Module, vocab: Vocabulary, score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, device: str | torch.device = "cpu",
                 categories: tuple[str, ...] = COCO_DETECTOR_CATEGORIES):
        super().__init__(vocab, categories, score_threshold, mask_threshold, device)
        self.model = model.to(device).eval()

    @torch.inference_mode()
    def candidates(self, images: np.ndarray) -> list[Candidates]:
        """One batched forward pass; torchvision returns boxes and soft masks at each image's size."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return [Candidates(labels=out["labels"], scores=out["scores"], boxes=out["boxes"],
                           masks=lambda chosen, soft=out["masks"]: soft[chosen, 0] > self.mask_threshold)
                for out in self.model(list(batch))]
