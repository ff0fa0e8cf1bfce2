"""The downstream segmenter: torchvision's DeepLabV3 or a small full-resolution UNet, its
(optionally class-balanced) loss and its prediction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights, WeightsEnum
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50, deeplabv3_resnet101

from stages.metrics import IGNORE_INDEX
from stages.segmenter_unet import SegmentationUNet
from stages.weights import WeightsMissingError, downloads_allowed


class Architecture(NamedTuple):
    build: Callable[[int, WeightsEnum | None, bool], nn.Module]  # (num_classes, backbone weights, aux_loss)
    backbone_weights: type[WeightsEnum] | None  # its backbone's ImageNet weights; None: from scratch only
    aux_head: bool  # whether it has DeepLab's auxiliary head (aux_loss)


def _deeplab(builder) -> Callable[[int, WeightsEnum | None, bool], nn.Module]:
    return lambda num_classes, backbone, aux_loss: builder(weights=None, weights_backbone=backbone,
                                                           num_classes=num_classes, aux_loss=aux_loss)


ARCHITECTURES = {
    "deeplabv3_mobilenet_v3_large": Architecture(_deeplab(deeplabv3_mobilenet_v3_large), MobileNet_V3_Large_Weights,
                                                 True),
    "deeplabv3_resnet50": Architecture(_deeplab(deeplabv3_resnet50), ResNet50_Weights, True),
    "deeplabv3_resnet101": Architecture(_deeplab(deeplabv3_resnet101), ResNet101_Weights, True),
    # full resolution for small images (the miniature world's 32-pixel scenes), 0.49M parameters
    "unet_small": Architecture(lambda num_classes, backbone, aux_loss: SegmentationUNet(num_classes), None, False),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics the backbones expect


def _imagenet_weights(architecture: str, name: str):
    """The torchvision backbone weights ``name``, failing with one line where they cannot be had."""
    enum = ARCHITECTURES[architecture].backbone_weights
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


def check_architecture(architecture: str, backbone_weights: str | None, aux_loss: bool) -> None:
    """ValueError (one line) for an unknown architecture, or backbone weights / an auxiliary loss it has not."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown segmenter architecture '{architecture}': not one of {', '.join(ARCHITECTURES)}")
    if backbone_weights is not None and ARCHITECTURES[architecture].backbone_weights is None:
        raise ValueError(f"{architecture} is trained from scratch and has no backbone weights: set "
                         f"backbone_weights: null, not {backbone_weights}")
    if aux_loss and not ARCHITECTURES[architecture].aux_head:
        raise ValueError(f"{architecture} has no auxiliary head: set aux_loss: false")


def build_segmenter(architecture: str, num_classes: int, backbone_weights: str | None = None,
                    aux_loss: bool = False) -> nn.Module:
    """A segmenter of ``ARCHITECTURES`` with ``num_classes`` outputs (background included).

    ``backbone_weights``: None (random init) or, for a DeepLabV3, the name of a torchvision ImageNet
    weights entry of the backbone (``IMAGENET1K_V1``, ...), read from torch.hub's checkpoint cache and
    downloaded there once where downloads are allowed.
    """
    check_architecture(architecture, backbone_weights, aux_loss)
    weights = None if backbone_weights is None else _imagenet_weights(architecture, backbone_weights)
    try:
        return ARCHITECTURES[architecture].build(num_classes, weights, aux_loss)
    except OSError as err:  # the one download failed (no network, full disk)
        raise WeightsMissingError(f"ImageNet backbone weights {backbone_weights} for {architecture} could not be "
                                  f"downloaded: {err}") from err


def class_pixels(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixels of each class in ``target`` (255 left out): (num_classes,) int64."""
    return torch.bincount(target[target != IGNORE_INDEX].flatten(), minlength=num_classes)


def median_frequency_weights(pixels: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """Class weights from pixel counts: (median frequency / frequency) ** ``power`` over the classes with
    pixels (median-frequency balancing, Eigen & Fergus 2015, at power 1; 0 weighs all alike). A class as
    frequent as the median weighs 1, background covering most of the image less, a rare class more.
    Classes without pixels get 0: no pixel of theirs is weighed."""
    weights = torch.zeros(pixels.shape, dtype=torch.float32, device=pixels.device)
    present = pixels > 0
    counts = pixels[present].float()
    weights[present] = (counts.median() / counts) ** power
    return weights


def segmentation_loss(outputs: dict[str, torch.Tensor], target: torch.Tensor, aux_weight: float = 0.5,
                      class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel cross-entropy ignoring 255 (averaged with ``class_weights`` per pixel when given), plus
    ``aux_weight`` times the auxiliary head's when present."""
    loss = F.cross_entropy(outputs["out"], target, weight=class_weights, ignore_index=IGNORE_INDEX)
    if "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"], target, weight=class_weights,
                                                   ignore_index=IGNORE_INDEX)
    return loss


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class index per pixel, (B, H, W), for normalised images (B, 3, H, W)."""
    return model(images)["out"].argmax(dim=1)
