"""Procedurally generated shapes with exact masks, and annotated datasets of them in the VOC layout.

Two renderers share the geometry (``FORMS``):
- ``draw_sample`` (the grounding toy benchmark): each class has its own colour (jittered), one to three
  shapes on a noisy grey background; colour alone tells the class.
- ``draw_scene`` (the miniature world): colour, size and position are drawn independently of the
  class on a flat background of a random colour, forms upright, so only the form tells the class; one
  or two shapes.

A dataset folder holds JPEGImages/, SegmentationClass/ (palette PNGs: 0 background, 1..K the
classes), ImageSets/Segmentation/{train,val}.txt, ``labels.txt`` (mask value -> class name) and
``vocab.yaml`` (the classes), so it is read exactly like PASCAL VOC.
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

_SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: smooth edges, masks exact to the pixel


def _regular(points: int, radii: tuple[float, ...] = (1.0,)) -> list[tuple[float, float]]:
    n = points * len(radii)
    return [(radii[i % len(radii)] * math.cos(2 * math.pi * i / n),
             radii[i % len(radii)] * math.sin(2 * math.pi * i / n)) for i in range(n)]


def _disc(dx: float = 0.0, r: float = 1.0) -> list[tuple[float, float]]:
    return [(dx + r * x, r * y) for x, y in _regular(48)]


def _heart() -> list[tuple[float, float]]:
    ts = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    return [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                           - math.cos(4 * t)) / 17 + 0.1) for t in ts]


# name -> the form in unit coordinates: (polygon, filled) layers drawn in order (False cuts a hole)
FORMS: dict[str, list[tuple[list[tuple[float, float]], bool]]] = {
    "circle": [(_disc(), True)],
    "square": [(_regular(4), True)],
    "triangle": [(_regular(3), True)],
    "star": [(_regular(5, (1.0, 0.45)), True)],
    "cross": [([(0.35, 1), (0.35, 0.35), (1, 0.35), (1, -0.35), (0.35, -0.35), (0.35, -1), (-0.35, -1),
                (-0.35, -0.35), (-1, -0.35), (-1, 0.35), (-0.35, 0.35), (-0.35, 1)], True)],
    "ring": [(_disc(), True), (_disc(r=0.55), False)],
    "hexagon": [(_regular(6), True)],
    "heart": [(_heart(), True)],
    "crescent": [(_disc(), True), (_disc(dx=0.45, r=0.85), False)],
    "arrow": [([(-1, -0.28), (0.15, -0.28), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.28), (-1, 0.28)], True)],
}


def shape_coverage(name: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Float (size, size) coverage in 0..1 of the form ``name`` centred at (cx, cy), radius r, rotated."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    c, s = math.cos(angle), math.sin(angle)
    for polygon, filled in FORMS[name]:
        draw.polygon([(_SUPERSAMPLE * (cx + r * (x * c - y * s)), _SUPERSAMPLE * (cy + r * (x * s + y * c)))
                      for x, y in polygon], fill=255 if filled else 0)
    cover = np.asarray(canvas, np.float32).reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean((1, 3))
    return cover / 255


def _polygon(name: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in FORMS[name][0][0]]


def draw_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 class-index mask, colour-coded by class."""
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


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A flat background in a random colour with a little noise: (size, size, 3) float. Measured, the
    gradient and two-tone backgrounds of earlier worlds, with rotated forms, kept a small UNet from
    learning the forms at all (docs/world.md)."""
    return rng.uniform(0, 255, 3) + rng.normal(0, 2, (size, size, 3))


# forms drawn upright: the pointed ones point up, the square stands on a side
UPRIGHT = {name: -math.pi / 2 if name in ("triangle", "star", "arrow") else math.pi / 4 if name == "square" else 0.0
           for name in FORMS}


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A random RGB colour far enough from the background's mean that the form is visible."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - mean) > 110:
            return colour
    return 255 - mean


def draw_scene(rng: np.random.Generator, size: int, classes: list[str], pair: bool
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One scene of one shape (two distinct ones when ``pair``), colour-free: (H, W, 3) uint8 image,
    (H, W) uint8 mask of indices into ``classes`` + 1 (later shapes occlude earlier ones), and the
    drawn class names in drawing order."""
    names = [classes[i] for i in rng.choice(len(classes), 2 if pair else 1, replace=False)]
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    radius = (0.17, 0.27) if pair else (0.22, 0.4)
    placed: list[tuple[float, float, float]] = []
    for name in names:
        r = rng.uniform(*radius) * size
        for _ in range(20):  # keep a pair apart enough that both stay visible
            cx, cy = rng.uniform(r, size - r, 2)
            if all(math.hypot(cx - x, cy - y) > 0.9 * (r + q) for x, y, q in placed):
                break
        placed.append((cx, cy, r))
        cover = shape_coverage(name, size, cx, cy, r, UPRIGHT[name])
        colour = _contrasting_colour(rng, image) + rng.normal(0, 4, (size, size, 3))
        image = image * (1 - cover[..., None]) + colour * cover[..., None]
        mask[cover >= 0.5] = classes.index(name) + 1
    return np.clip(image, 0, 255).round().astype(np.uint8), mask, names


def _write_voc_layout(root: Path, samples, n_train: int, classes: list[str], palette: list[int]) -> Path:
    """Write ``samples`` ((image, mask) pairs) as a VOC-layout folder; the first ``n_train`` are train."""
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (image, mask) in enumerate(samples):
        image_id = f"toy_{i:06d}"
        ids.append(image_id)
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        seg = Image.fromarray(mask, mode="L").convert("P")
        seg.putpalette(palette)
        seg.save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    (root / "vocab.yaml").write_text(yaml.safe_dump({"name": "toy-shapes", "classes": list(classes)}))
    (root / "labels.txt").write_text("\n".join(["background", *classes]) + "\n")  # mask value -> class name
    return root


def write_toy_dataset(root: Path, n_train: int, n_val: int, size: int = 64, seed: int = 0) -> Path:
    """Write the colour-coded dataset into ``root`` (deterministic in ``seed``); returns ``root``."""
    rng = np.random.default_rng(seed)
    palette = [0, 0, 0] + [c for rgb in SHAPES.values() for c in rgb]
    return _write_voc_layout(root, (draw_sample(rng, size) for _ in range(n_train + n_val)), n_train,
                             list(SHAPES), palette)


def write_scene_dataset(root: Path, classes: list[str], n_train: int, n_val: int, size: int, seed: int = 0,
                        pair_fraction: float = 0.5) -> Path:
    """Write colour-free scenes of ``classes`` (``draw_scene``) as a VOC-layout folder; returns ``root``."""
    rng = np.random.default_rng(seed)
    palette = [0, 0, 0] + [int(v) for v in np.random.default_rng(0).integers(40, 256, 3 * len(classes))]
    scenes = (draw_scene(rng, size, classes, bool(rng.random() < pair_fraction))[:2] for _ in range(n_train + n_val))
    return _write_voc_layout(root, scenes, n_train, classes, palette)
