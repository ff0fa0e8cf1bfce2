"""Reading datagen shards with webdataset: images as RGB, ``seg.png`` as class-index arrays."""

from __future__ import annotations

import io

import numpy as np
import webdataset as wds
from PIL import Image


def decode_class_mask(data: bytes) -> np.ndarray:
    """``seg.png`` -> uint8 (H, W) class ids (webdataset's image decoders would make it RGB)."""
    return np.array(Image.open(io.BytesIO(data)))


def open_dataset(urls, image: str = "rgb8", **webdataset_kwargs) -> wds.WebDataset:
    """A ``webdataset.WebDataset`` over datagen shards (local paths, brace patterns or URLs),
    decoding images with ``image`` (a webdataset image spec), masks as class ids, json as dicts."""
    webdataset_kwargs.setdefault("shardshuffle", False)
    return wds.WebDataset(urls, **webdataset_kwargs).decode(
        wds.handle_extension("seg.png", decode_class_mask), image)
