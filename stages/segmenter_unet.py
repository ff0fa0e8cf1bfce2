"""A small segmentation UNet trained from scratch, for images too small for DeepLabV3's output stride.

DeepLabV3's backbones predict at 1/8 to 1/16 of the input, so a 32-pixel image leaves them a 2x2 to 4x4
map; this UNet predicts at full resolution: an encoder that halves the size ``depth`` times, a decoder
that doubles it back, joining the encoder's map of the same size at each step (Ronneberger et al. 2015).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with batch norm and ReLU; the size is kept."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SegmentationUNet(nn.Module):
    """(B, 3, H, W) images -> ``{"out": (B, num_classes, H, W) logits}``, the dict torchvision's segmenters
    return. ``width`` channels at full resolution, doubled at each of the ``depth`` halvings; any H, W of at
    least 2 ** depth works (a size that does not halve evenly is matched by interpolation on the way up)."""

    def __init__(self, num_classes: int, width: int = 16, depth: int = 3):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(3, widths[0])] + [_block(a, b) for a, b in zip(widths, widths[1:])])
        self.up = nn.ModuleList([_block(b + a, a) for a, b in zip(widths, widths[1:])])
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        skips = []
        x = images
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(reversed(self.up), reversed(skips[:-1])):
            x = block(torch.cat([skip, F.interpolate(x, size=skip.shape[-2:], mode="bilinear",
                                                     align_corners=False)], dim=1))
        return {"out": self.head(x)}
