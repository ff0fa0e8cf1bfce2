"""A procedurally generated annotated dataset in the VOC layout: coloured geometric shapes with exact masks.

Each shape is a class with a name and its own colour (jittered), drawn at a random place and size on
a noisy grey background, one to three per image (later shapes occlude earlier ones). The folder holds
JPEGImages/, SegmentationClass/ (palette PNGs: 0 background, 1..K the classes), ImageSets/Segmentation/
{train,val}.txt, ``labels.txt`` (mask value -> class name) and ``vocab.yaml`` (the classes), so it is read
exactly like PASCAL VOC.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

# name -> RGB; the names are single CLIP words, so each class is a distinct text query
SHAPES = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (40, 80, 220),
          "star": (230, 200, 30), "cross": (200, 60, 200)}


def _polygon(name: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(points: int, radii: list[float]) -> list[tuple[float, float]]:
        n = points * len(radii)
        return [(cx + radii[i % len(radii)] * r * math.cos(angle + 2 * math.pi * i / n),
                 cy + radii[i % len(radii)] * r * math.sin(angle + 2 * math.pi * i / n)) for i in range(n)]

    if name == "square":
        return ring(4, [1.0])
    if name == "triangle":
        return ring(3, [1.0])
    if name == "star":
        return ring(5, [1.0, 0.45])
    if name == "cross":
        w = 0.35
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w),
               (-w, w), (-w, 1)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]
    raise ValueError(name)


def draw_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 class-index mask."""
    grey = rng.integers(90, 170)
    image = Image.fromarray(np.clip(rng.normal(grey, 12, (size, size, 3)), 0, 255).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    names = list(SHAPES)
    for _ in range(rng.integers(1, 4)):
        k = int(rng.integers(len(names)))
        name = names[k]
        r = rng.uniform(0.12, 0.25) * size
        cx, cy = rng.uniform(r, size - r, 2)
        colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in SHAPES[name])
        if name == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw_image.ellipse(box, fill=colour)
            draw_mask.ellipse(box, fill=k + 1)
        else:
            poly = _polygon(name, cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw_image.polygon(poly, fill=colour)
            draw_mask.polygon(poly, fill=k + 1)
    return np.array(image), np.array(mask)


def write_toy_dataset(root: Path, n_train: int, n_val: int, size: int = 64, seed: int = 0) -> Path:
    """Write the dataset into ``root`` (deterministic in ``seed``); returns ``root``."""
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = [0, 0, 0] + [c for rgb in SHAPES.values() for c in rgb]
    ids = [f"toy_{i:06d}" for i in range(n_train + n_val)]
    for image_id in ids:
        image, mask = draw_sample(rng, size)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        seg = Image.fromarray(mask, mode="L").convert("P")
        seg.putpalette(palette)
        seg.save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    (root / "vocab.yaml").write_text(yaml.safe_dump({"name": "toy-shapes", "classes": list(SHAPES)}))
    (root / "labels.txt").write_text("\n".join(["background", *SHAPES]) + "\n")  # mask value -> class name
    return root
