"""Annotated images in the PASCAL VOC layout, read the same way by grounding training
(`datagen train-annotated`) and by the ZS3 benchmark.

``ROOT/JPEGImages/ID.jpg``; masks in ``ROOT/SegmentationClass/ID.png`` (palette PNG) or
``ROOT/SegmentationClassAug/ID.png`` (grey-level PNG); split lists in
``ROOT/ImageSets/Segmentation/SPLIT.txt`` or ``ROOT/ImageSets/SegmentationAug/SPLIT.txt``.
A mask value names a class: the VOC devkit's list, or the folder's own ``labels.txt`` (one name per
line, the first one value 0, the background). Values become vocabulary ids by name
(``labels.label_table``), never by position; 255 is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.dataset.members import decode_mask, decode_rgb
from stages.errors import DataError

# The VOC devkit's label values, in its own order (VOCdevkit/VOCcode/VOCinit.m); 255 marks borders.
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
LABELS_FILE = "labels.txt"
MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
LIST_DIRS = ("Segmentation", "SegmentationAug")


@dataclass(frozen=True)
class VocImage:
    id: str
    image: Path
    mask: Path


def label_names(root: Path) -> tuple[dict[int, str], str]:
    """Mask value -> class name for the folder, and where the names come from (for messages)."""
    labels = Path(root) / LABELS_FILE
    if labels.is_file():
        names = [line.strip() for line in labels.read_text().splitlines() if line.strip()]
        return dict(enumerate(names)), str(labels)
    return dict(enumerate(VOC_CLASSES)), "the VOC devkit's classes"


def voc_images(root: Path, split: str) -> list[VocImage]:
    """The images a split lists, each with its mask; DataError naming what is missing."""
    root = Path(root)
    candidates = [root / "ImageSets" / d / f"{split}.txt" for d in LIST_DIRS]
    listing = next((p for p in candidates if p.is_file()), None)
    if listing is None and not (root / "JPEGImages").is_dir():
        raise DataError(f"{candidates[0]} is missing: not a VOC-layout folder with a '{split}' image set")
    if listing is None:
        raise DataError(f"{candidates[0]} is missing: VOC split '{split}' has no list file "
                        f"({' or '.join(str(p) for p in candidates)})")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"VOC split '{split}': {listing} lists no images")
    images = []
    for image_id in ids:
        image = root / "JPEGImages" / f"{image_id}.jpg"
        mask = next((p for d in MASK_DIRS if (p := root / d / f"{image_id}.png").is_file()), None)
        if not image.is_file():
            raise DataError(f"{image} is missing (listed in {listing})")
        if mask is None:
            raise DataError(f"{image_id}.png is missing in {' and '.join(MASK_DIRS)} (listed in {listing})")
        images.append(VocImage(image_id, image, mask))
    return images


def read_mask(path: Path) -> np.ndarray:
    """A mask's values (map them to vocabulary ids with ``labels.label_table``); DataError naming the file
    when it does not decode, is a decompression bomb or is not one 8-bit value per pixel (P or L)."""
    return decode_mask(path, str(path))


def read_image(path: Path) -> np.ndarray:
    """An image as uint8 (H, W, 3); DataError naming the file when it does not decode or is a bomb."""
    return decode_rgb(path, str(path))


def read_pair(item: VocImage) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, which must cover it pixel for pixel."""
    image, mask = read_image(item.image), read_mask(item.mask)
    if mask.shape != image.shape[:2]:
        raise DataError(f"{item.mask} is {mask.shape[1]}x{mask.shape[0]}, its image {item.image} "
                        f"{image.shape[1]}x{image.shape[0]}: a mask must cover its image pixel for pixel")
    return image, mask


def resize_crop(img: Image.Image, size: int, resample) -> np.ndarray:
    """Shorter side to ``size``, then the centred ``size`` x ``size`` square."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(img.crop((left, top, left + size, top + size)))
