"""Real datasets with ground truth: PASCAL VOC folders and COCO instance annotations, as
(image, class-id mask) pairs in a vocabulary's ids (0 background, 255 ignored).

VOC: ``ROOT/JPEGImages/ID.jpg``, masks in ``ROOT/SegmentationClass/ID.png`` (palette PNG) or
``ROOT/SegmentationClassAug/ID.png`` (grey-level PNG), split lists in
``ROOT/ImageSets/Segmentation/SPLIT.txt`` or ``ROOT/ImageSets/SegmentationAug/SPLIT.txt``.
COCO: ``ROOT/annotations/instances_SPLIT.json`` with images in ``ROOT/SPLIT/``; masks are painted
from the instance polygons / RLE through pycocotools, larger instances first, crowd regions ignored.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from pipeline.evaluate.zs3.config import Zs3InputError
from pipeline.evaluate.zs3.labels import label_table
from pipeline.evaluate.zs3.transforms import Transform
from stages.metrics import IGNORE_INDEX
from stages.vocab import Vocabulary

# The VOC devkit's label values, in its own order (VOCdevkit/VOCcode/VOCinit.m); 255 marks borders.
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
VOC_MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")
VOC_LIST_DIRS = ("Segmentation", "SegmentationAug")
DEFAULT_SPLITS = {"voc": ("train", "val"), "coco": ("train2017", "val2017")}


def detect_format(root: Path) -> str:
    """voc or coco, from the folder's layout."""
    if not root.is_dir():
        raise Zs3InputError(f"--real {root}: no such folder")
    if (root / "JPEGImages").is_dir():
        return "voc"
    if (root / "annotations").is_dir():
        return "coco"
    raise Zs3InputError(f"--real {root}: neither a VOC folder (JPEGImages/) nor a COCO folder (annotations/)")


class RealSegmentation(Dataset):
    """Map-style dataset of (image, mask) tensors after ``transform``; ``items`` are loaders' keys."""

    def __init__(self, name: str, items: list, load, transform: Transform):
        self.name, self.items, self._load, self.transform = name, items, load, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.transform(*self._load(self.items[i]))


def _voc_list(root: Path, split: str) -> list[str]:
    candidates = [root / "ImageSets" / d / f"{split}.txt" for d in VOC_LIST_DIRS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise Zs3InputError(f"VOC split '{split}': no list file {' or '.join(str(p) for p in candidates)}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise Zs3InputError(f"VOC split '{split}': {path} lists no images")
    return ids


def _voc_mask_path(root: Path, image_id: str) -> Path | None:
    return next((p for d in VOC_MASK_DIRS if (p := root / d / f"{image_id}.png").is_file()), None)


def voc_split(root: Path, split: str, vocabulary: Vocabulary, transform: Transform,
              ignored_ids: frozenset[int] = frozenset()) -> RealSegmentation:
    """One VOC split; every listed image and mask must exist."""
    ids = _voc_list(root, split)
    table = label_table(dict(enumerate(VOC_CLASSES)), vocabulary, f"VOC ({root})", ignored_ids)
    items = []
    for image_id in ids:
        image, mask = root / "JPEGImages" / f"{image_id}.jpg", _voc_mask_path(root, image_id)
        if not image.is_file() or mask is None:
            raise Zs3InputError(f"VOC split '{split}' lists {image_id} but {image if mask else 'its mask'} is missing "
                                f"(looked in JPEGImages/ and {', '.join(VOC_MASK_DIRS)}/)")
        items.append((image, mask))

    def load(item):
        image_path, mask_path = item
        with Image.open(mask_path) as m:
            if m.mode not in ("P", "L"):
                raise Zs3InputError(f"{mask_path}: mask mode {m.mode}; expected class indices (palette or grey PNG)")
            mask = table[np.array(m)]
        with Image.open(image_path) as im:
            return np.array(im.convert("RGB")), mask

    load(items[0])  # a readable first pair, or one clear line now
    return RealSegmentation(f"VOC {split}", items, load, transform)


def coco_split(root: Path, split: str, vocabulary: Vocabulary, transform: Transform,
               ignored_ids: frozenset[int] = frozenset()) -> RealSegmentation:
    """One COCO split; categories outside the vocabulary and crowd regions are ignored (255)."""
    from pycocotools.coco import COCO

    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise Zs3InputError(f"COCO split '{split}': no annotation file {annotations}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(annotations))
    except (ValueError, KeyError) as err:
        raise Zs3InputError(f"{annotations} is not a COCO instances file: {err}") from err
    categories = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    if max(categories, default=0) > 254:
        raise Zs3InputError(f"{annotations}: category ids above 254 cannot be mask values")
    table = label_table(categories, vocabulary, f"COCO ({annotations})", ignored_ids)
    items = sorted(coco.getImgIds())
    if not items:
        raise Zs3InputError(f"COCO split '{split}': {annotations} lists no images")
    folder = root / split

    def load(image_id):
        info = coco.loadImgs(image_id)[0]
        mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=image_id)), key=lambda a: -a["area"])
        for ann in anns:  # larger first, so smaller objects stay visible on top
            value = IGNORE_INDEX if ann.get("iscrowd") else table[ann["category_id"]]
            mask[coco.annToMask(ann) > 0] = value
        path = folder / info["file_name"]
        if not path.is_file():
            raise Zs3InputError(f"COCO image {path} is missing")
        with Image.open(path) as im:
            return np.array(im.convert("RGB")), mask

    load(items[0])
    return RealSegmentation(f"COCO {split}", items, load, transform)


def real_split(root: Path, fmt: str, split: str, vocabulary: Vocabulary, transform: Transform,
               ignored_ids: frozenset[int] = frozenset()) -> RealSegmentation:
    reader = {"voc": voc_split, "coco": coco_split}[fmt]
    return reader(root, split, vocabulary, transform, ignored_ids)
