"""Real datasets with ground truth: PASCAL VOC folders and COCO instance annotations, as
(image, class-id mask) pairs in a vocabulary's ids (0 background, 255 ignored).

VOC: the layout ``pipeline.dataset.voc`` reads (the same reader grounding training uses).
COCO: ``ROOT/annotations/instances_SPLIT.json`` with images in ``ROOT/SPLIT/``; masks are painted
from the instance polygons / RLE through pycocotools, larger instances first, crowd regions ignored.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from pipeline.dataset.labels import label_table
from pipeline.dataset.voc import VocImage, label_names, read_image, read_pair, voc_images
from pipeline.evaluate.zs3.transforms import Transform
from stages.errors import DataError
from stages.metrics import IGNORE_INDEX
from stages.vocab import Vocabulary

DEFAULT_SPLITS = {"voc": ("train", "val"), "coco": ("train2017", "val2017")}


def detect_format(root: Path) -> str:
    """voc or coco, from the folder's layout."""
    if not root.is_dir():
        raise DataError(f"--real {root}: no such folder")
    if (root / "JPEGImages").is_dir():
        return "voc"
    if (root / "annotations").is_dir():
        return "coco"
    raise DataError(f"--real {root}: neither a VOC folder (JPEGImages/) nor a COCO folder (annotations/)")


class RealSegmentation(Dataset):
    """Map-style dataset of (image, mask) tensors after ``transform``; ``items`` are loaders' keys."""

    def __init__(self, name: str, items: list, load, transform: Transform):
        self.name, self.items, self._load, self.transform = name, items, load, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.transform(*self._load(self.items[i]))


def voc_split(root: Path, split: str, vocabulary: Vocabulary, transform: Transform,
              ignored_ids: frozenset[int] = frozenset()) -> RealSegmentation:
    """One VOC split (``pipeline.dataset.voc``); every listed image and mask must exist."""
    images = voc_images(root, split)
    names, source = label_names(root)
    table = label_table(names, vocabulary, f"VOC ({root}, {source})", ignored_ids)

    def load(item: VocImage):
        image, mask = read_pair(item)
        return image, table[mask]

    load(images[0])  # a readable first pair, or one clear line now
    return RealSegmentation(f"VOC {split}", images, load, transform)


def coco_split(root: Path, split: str, vocabulary: Vocabulary, transform: Transform,
               ignored_ids: frozenset[int] = frozenset()) -> RealSegmentation:
    """One COCO split; categories outside the vocabulary and crowd regions are ignored (255)."""
    from pycocotools.coco import COCO

    annotations = root / "annotations" / f"instances_{split}.json"
    if not annotations.is_file():
        raise DataError(f"COCO split '{split}': no annotation file {annotations}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(annotations))
    except (ValueError, KeyError) as err:
        raise DataError(f"{annotations} is not a COCO instances file: {err}") from err
    categories = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    if max(categories, default=0) > 254:
        raise DataError(f"{annotations}: category ids above 254 cannot be mask values")
    table = label_table(categories, vocabulary, f"COCO ({annotations})", ignored_ids)
    items = sorted(coco.getImgIds())
    if not items:
        raise DataError(f"COCO split '{split}': {annotations} lists no images")
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
            raise DataError(f"COCO image {path} is missing")
        image = read_image(path)
        if image.shape[:2] != mask.shape:
            raise DataError(f"COCO image {path} is {image.shape[1]}x{image.shape[0]}, its annotations say "
                            f"{mask.shape[1]}x{mask.shape[0]}")
        return image, mask

    load(items[0])
    return RealSegmentation(f"COCO {split}", items, load, transform)


def real_split(root: Path, fmt: str, split: str, vocabulary: Vocabulary, transform: Transform,
               ignored_ids: frozenset[int] = frozenset()) -> RealSegmentation:
    reader = {"voc": voc_split, "coco": coco_split}[fmt]
    return reader(root, split, vocabulary, transform, ignored_ids)
