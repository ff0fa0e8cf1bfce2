"""Shard sizing: a target shard size in MB turned into samples per shard at planning time.

Shards hold a fixed number of samples (shard j = samples [j*S, (j+1)*S)), which keeps shards
deterministic and resumable; a size target is converted once, from an estimate of one sample's bytes,
and the resulting S is what the config (and its fingerprint) records. `datagen stats` reports the
real MB per sample, to refine the target of the next run.
"""

from __future__ import annotations

import math
import tarfile

from pipeline.dataset.shards import SHARD_MTIME

BLOCK = tarfile.BLOCKSIZE
# Per member: a ustar header, the data padded to a whole block (half a block on average) and, because
# tarfile writes a float mtime (shards.SHARD_MTIME) as a pax record, a pax header plus its record block.
TAR_MEMBER_BYTES = BLOCK + BLOCK // 2 + (2 * BLOCK if isinstance(SHARD_MTIME, float) else 0)
TAR_END_BYTES = 2 * BLOCK + tarfile.RECORDSIZE // 2  # end-of-archive blocks, then padding to a whole record
MEMBERS = 3  # image, seg.png, json
IMAGE_BYTES_PER_PIXEL = {"jpg": 0.5, "png": 2.0}  # JPEG q95 / PNG of photo-like RGB images
MASK_BYTES = 100  # a one-channel PNG's fixed part
MASK_BYTES_PER_PIXEL = 0.03  # a few flat class regions
JSON_BYTES = 1000  # RLE counts grow with the image side and instance count


def bytes_per_sample(image_size: int, image_format: str) -> int:
    """Estimated bytes of one dataset sample in a shard (image, seg.png, json and their tar headers)."""
    pixels = image_size * image_size
    return math.ceil(pixels * (IMAGE_BYTES_PER_PIXEL[image_format] + MASK_BYTES_PER_PIXEL) + MASK_BYTES
                     + JSON_BYTES + MEMBERS * TAR_MEMBER_BYTES)


def samples_per_shard(target_mb: float, image_size: int, image_format: str) -> int:
    """Samples per shard for shards of about ``target_mb`` megabytes (at least one sample)."""
    return max(1, int((target_mb * 1e6 - TAR_END_BYTES) // bytes_per_sample(image_size, image_format)))
