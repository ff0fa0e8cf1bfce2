"""The downstream segmenter: torchvision's DeepLabV3, its loss and its prediction."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, deeplabv3_resnet101

from stages.metrics import IGNORE_INDEX
from stages.weights import WeightsMissingError, downloads_allowed

ARCHITECTURES = {  # name -> (builder, its backbone's ImageNet weights enum)
    "deeplabv3_mobilenet_v3_large": (deeplabv3_mobilenet_v3_large, MobileNet_V3_Large_Weights),
    "deeplabv3_resnet50": (deeplabv3_resnet50, ResNet50_Weights),
    "deeplabv3_resnet101": (deeplabv3_resnet101, ResNet101_Weights),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics the backbones expect


def _imagenet_weights(architecture: str, name: str):
    """The torchvision backbone weights ``name``, failing with one line where they cannot be had."""
    enum = ARCHITECTURES[architecture][1]
    try:
        weights = enum[name]
    except KeyError:
        raise WeightsMissingError(f"backbone weights '{name}' are not one of "
                                  f"{', '.join(w.name for w in enum)} for {architecture}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file() and not downloads_allowed():
        raise WeightsMissingError(f"ImageNet backbone weights {cached.name} are not in {cached.parent} and "
                                  f"downloads are off: put {weights.url} there")
    return weights


def build_segmenter(architecture: str, num_classes: int, backbone_weights: str | None = None,
                    aux_loss: bool = False) -> nn.Module:
    """A DeepLabV3 with ``num_classes`` outputs (background included).

    ``backbone_weights``: None (random init, for tests) or the name of a torchvision ImageNet weights
    entry of the backbone (``IMAGENET1K_V1``, ...), read from torch.hub's checkpoint cache and
    downloaded there once where downloads are allowed.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown segmenter architecture '{architecture}': not one of {', '.join(ARCHITECTURES)}")
    weights = None if backbone_weights is None else _imagenet_weights(architecture, backbone_weights)
    try:
        return ARCHITECTURES[architecture][0](weights=None, weights_backbone=weights, num_classes=num_classes,
                                              aux_loss=aux_loss)
    except OSError as err:  # the one download failed (no network, full disk)
        raise WeightsMissingError(f"ImageNet backbone weights {backbone_weights} for {architecture} could not be "
                                  f"downloaded: {err}") from err


def segmentation_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.5) -> torch.Tensor:
    """Pixel cross-entropy ignoring 255, plus ``aux_weight`` times the auxiliary head's when present."""
    loss = F.cross_entropy(outputs["out"], target, ignore_index=IGNORE_INDEX)
    if "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=IGNORE_INDEX)
    return loss


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class index per pixel, (B, H, W), for normalised images (B, 3, H, W)."""
    return model(images)["out"].argmax(dim=1)
