"""Constructed ZS3 data with exact masks: a VOC-format folder and datagen-format synthetic shards.

Each class is a solid shape of its own colour on a noisy background, so the label of every pixel is
known exactly and a segmenter can learn it. VOC masks are palette PNGs with 255 borders, as in VOC.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.dataset.shards import encode_image, encode_mask, write_shard

# VOC label value -> (name, colour): three seen classes and one unseen (sheep) in the voc vocabulary.
CLASSES = {1: ("aeroplane", (230, 30, 30)), 7: ("car", (30, 200, 40)), 15: ("person", (40, 60, 230)),
           17: ("sheep", (240, 240, 40))}
VOCAB_IDS = {"aeroplane": 1, "car": 7, "person": 15, "sheep": 17}  # ids in configs/vocab/voc.yaml
SIZE = 64


def scene(rng: np.random.Generator, labels: list[int], border: bool) -> tuple[np.ndarray, np.ndarray]:
    """An image with one rectangle or disc per label, and its exact mask (255 on shape borders if asked)."""
    image = rng.integers(60, 120, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for label in labels:
        h, w = rng.integers(14, 28, 2)
        top, left = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
        if rng.random() < 0.5:
            shape = (yy >= top) & (yy < top + h) & (xx >= left) & (xx < left + w)
        else:
            shape = (yy - top - h / 2) ** 2 + (xx - left - w / 2) ** 2 < (min(h, w) / 2) ** 2
        image[shape] = CLASSES[label][1]
        mask[shape] = label
        if border:
            inner = shape & np.roll(shape, 1, 0) & np.roll(shape, -1, 0) & np.roll(shape, 1, 1) & np.roll(shape, -1, 1)
            mask[shape & ~inner] = 255
    return image, mask


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved label -> RGB), as the devkit's PNGs carry it."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def make_voc(root: Path, n_train: int = 16, n_val: int = 8, seed: int = 0) -> Path:
    """VOCdevkit/VOC2012-like folder: JPEGImages (PNG-quality JPEGs), SegmentationClass, ImageSets lists."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    labels = list(CLASSES)
    palette = voc_palette()
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        for i in range(n):
            image_id = f"2007_{split}{i:04d}"
            chosen = [labels[i % len(labels)], labels[(i + 1 + i // len(labels)) % len(labels)]]
            image, mask = scene(rng, sorted(set(chosen)), border=True)
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=98)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            png.save(root / "SegmentationClass" / f"{image_id}.png")
            ids.append(image_id)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def make_synthetic(out: Path, shards: int = 2, per_shard: int = 8, seed: int = 1) -> Path:
    """A datagen output folder (classes.json + data/ shards via write_shard) of single-class scenes
    over the same four classes, unseen sheep included, in the voc vocabulary's ids."""
    rng = np.random.default_rng(seed)
    data = out / "data"
    data.mkdir(parents=True)
    (out / "classes.json").write_text(json.dumps({"background": 0, "ignore": 255, "classes": [
        {"id": i, "name": n, "seen": n != "sheep"} for n, i in VOCAB_IDS.items()]}))
    names = list(VOCAB_IDS)
    for shard in range(shards):
        samples = []
        for k in range(per_shard):
            index = shard * per_shard + k
            name = names[index % len(names)]
            voc_label = next(label for label, (n, _) in CLASSES.items() if n == name)
            image, mask = scene(rng, [voc_label], border=False)
            seg = np.where(mask == voc_label, VOCAB_IDS[name], 0).astype(np.uint8)
            meta = {"prompt": f"a photograph of a {name}", "classes": [name], "class_ids": [VOCAB_IDS[name]],
                    "seed": index, "index": index, "labeler": "constructed", "instances": [],
                    "height": SIZE, "width": SIZE, "provenance": {"phase": "label"}}
            samples.append({"__key__": f"{index:012d}", "jpg": encode_image(image, "jpg"),
                            "seg.png": encode_mask(seg), "json": json.dumps(meta).encode()})
        write_shard(data, shard, samples, {"start": shard * per_shard, "end": (shard + 1) * per_shard,
                                           "written": per_shard, "failed": []})
    return out


def corrupt_member(shard: Path, key: str, member: str = "jpg", data: bytes = b"not an image") -> None:
    """Replace one member of one sample in a shard tar (the shard's stats stay: it still looks finished)."""
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for info, content in members:
            if info.name == f"{key}.{member}":
                content = data
                info.size = len(data)
            tar.addfile(info, io.BytesIO(content))


def decompression_bomb(side: int = 30000) -> bytes:
    """A PNG whose header says side x side 8-bit pixels (900 MB at 30000) in a file of a few hundred bytes:
    its pixel data stops after one row, so only a reader that trusts the header before decoding pays."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # grey, 8 bits, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) \
        + chunk(b"IEND", b"")
