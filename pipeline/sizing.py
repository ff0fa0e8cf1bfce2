"""Shard sizing: a target shard size in MB turned into samples per shard at planning time.

Shards hold a fixed number of samples (shard j = samples [j*S, (j+1)*S)), which keeps shards
deterministic and resumable; a size target is converted once, from an estimate of one sample's bytes,
and the resulting S is what the config (and its fingerprint) records. `datagen stats` reports the
real MB per sample, to refine the target of the next run.
"""

from __future__ import annotations

import math

TAR_MEMBER_BYTES = 512 + 256  # a tar header, plus half a 512-byte block of padding on average
IMAGE_BYTES_PER_PIXEL = {"jpg": 0.5, "png": 2.0}  # JPEG q95 / PNG of photo-like RGB images
MASK_BYTES_PER_PIXEL = 0.03  # one-channel PNG of a few flat class regions
JSON_BYTES = 3000  # prompt, classes, provenance and a few instances' RLE


def bytes_per_sample(image_size: int, image_format: str) -> int:
    """Estimated bytes of one dataset sample in a shard (image, seg.png, json and their tar headers)."""
    pixels = image_size * image_size
    return math.ceil(pixels * (IMAGE_BYTES_PER_PIXEL[image_format] + MASK_BYTES_PER_PIXEL) + JSON_BYTES
                     + 3 * TAR_MEMBER_BYTES)


def samples_per_shard(target_mb: float, image_size: int, image_format: str = "jpg") -> int:
    """Samples per shard for shards of about ``target_mb`` megabytes (at least one sample)."""
    return max(1, int(target_mb * 1e6 // bytes_per_sample(image_size, image_format)))
