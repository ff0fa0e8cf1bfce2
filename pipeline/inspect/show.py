"""`datagen show`: a contact sheet of samples, each image beside its mask, with a legend.

The panels are drawn by torchvision (``draw_segmentation_masks`` colours each class's pixels, ``make_grid``
lays the samples out); the colours are colorcet's glasbey palette, 256 colours chosen to stay apart from
each other and from black and white, so background (black) and ignore (white) never look like a class.
"""

from __future__ import annotations

import io
import math
import random
import textwrap
from pathlib import Path

import colorcet
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_segmentation_masks, make_grid

from pipeline.dataset.atomic import make_folder, write_bytes_atomic
from pipeline.dataset.members import check_mask, decode_json, decode_mask, decode_rgb
from pipeline.dataset.reader import image_member
from pipeline.inspect.folder import BadSample, DatasetFolder
from stages.errors import DataError
from stages.metrics import IGNORE_INDEX

TILE = 160  # side of each image and mask panel in pixels (images resized bilinear, masks nearest)
GAP = 8  # between samples, and around the sheet
CAPTION_LINES = 2  # of the prompt, then the key
LINE = 15  # text line height, font size 12
BACKGROUND, IGNORE = (0, 0, 0), (255, 255, 255)


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A mask value's colour: black for background (0), white for ignore (255), glasbey's for a class."""
    if class_id == 0:
        return BACKGROUND
    if class_id == IGNORE_INDEX:
        return IGNORE
    return tuple(int(colorcet.glasbey[class_id - 1][i:i + 2], 16) for i in (1, 3, 5))


def _decoded(ds: DatasetFolder, shard: Path, sample: dict, mask: np.ndarray | None = None) -> dict:
    """A sample ready to draw (key, json, RGB image, checked mask); BadSample where a member is not the format."""
    try:
        mask = decode_mask(sample["seg.png"]) if mask is None else mask
        meta, image = decode_json(sample["json"]), decode_rgb(image_member(sample), "the image")
        check_mask(mask, image.shape, ds.names, "in the vocabulary")
    except DataError as err:
        raise BadSample(shard, sample["__key__"], str(err)) from err
    return {"key": sample["__key__"], "meta": meta, "image": image, "mask": mask}


def _has_class(shard: Path, sample: dict, class_id: int | None) -> bool:
    try:
        return class_id is None or bool((decode_mask(sample["seg.png"]) == class_id).any())
    except DataError as err:
        raise BadSample(shard, sample["__key__"], str(err)) from err


def pick_samples(ds: DatasetFolder, n: int, class_name: str | None, seed: int | None = None) -> list[dict]:
    """n samples, decoded (those whose mask labels pixels ``class_name`` if given): the first ones in shard
    order, or with a ``seed`` n drawn at random (the same n for the same seed), in shard order."""
    ids = {name: cid for cid, name in ds.names.items()}
    if class_name is not None and class_name not in ids:
        raise DataError(f"--class {class_name}: not in this dataset's vocabulary ({', '.join(ids)})")
    wanted = ids.get(class_name)
    if seed is not None and wanted is None:
        picked = _random_positions(ds, n, random.Random(seed))
    else:
        picked = _scan(ds, n, wanted, random.Random(seed) if seed is not None else None)
    if not picked:
        raise DataError(f"no sample in {ds.out} has pixels labelled {class_name}")
    return picked


def _scan(ds: DatasetFolder, n: int, wanted: int | None, rng: random.Random | None) -> list[dict]:
    """The first n samples that label ``wanted``, or (``rng``) n of them drawn uniformly by reservoir
    sampling over every sample (each mask is decoded)."""
    kept, seen = [], 0
    for shard in ds.shards:
        for sample in ds.samples(shard):
            if not _has_class(shard, sample, wanted):
                continue
            seen += 1
            if rng is None:
                kept.append((seen, shard, sample))
                if len(kept) == n:
                    return [_decoded(ds, s, raw) for _, s, raw in kept]
            elif len(kept) < n:
                kept.append((seen, shard, sample))
            elif (j := rng.randrange(seen)) < n:
                kept[j] = (seen, shard, sample)
    return [_decoded(ds, s, raw) for _, s, raw in sorted(kept, key=lambda k: k[0])]


def _random_positions(ds: DatasetFolder, n: int, rng: random.Random) -> list[dict]:
    """n samples drawn uniformly from the shards' written counts: only the shards holding them are read."""
    counts = [ds.counted_stats(shard)["written"] for shard in ds.shards]
    chosen = set(rng.sample(range(sum(counts)), min(n, sum(counts))))
    picked, first = [], 0
    for shard, count in zip(ds.shards, counts, strict=True):
        if chosen & set(range(first, first + count)):
            picked += [_decoded(ds, shard, s) for i, s in enumerate(ds.samples(shard), first) if i in chosen]
        first += count
    return picked


def pair(image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """The image and its mask side by side, uint8 (3, TILE, 2 * TILE + 2): each class's pixels in its colour."""
    rgb = np.array(Image.fromarray(image).resize((TILE, TILE), Image.Resampling.BILINEAR))
    ids = torch.from_numpy(np.array(Image.fromarray(mask).resize((TILE, TILE), Image.Resampling.NEAREST)))
    values = [int(v) for v in ids.unique() if v != 0]
    painted = torch.zeros(3, TILE, TILE, dtype=torch.uint8)
    if values:
        painted = draw_segmentation_masks(painted, torch.stack([ids == v for v in values]), alpha=1.0,
                                          colors=[class_colour(v) for v in values])
    return make_grid([torch.from_numpy(rgb).permute(2, 0, 1), painted], nrow=2, padding=2, pad_value=255)[:, 2:-2, 2:-2]


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (words kept whole where they fit)."""
    chars = max(8, int(len(text) * width / max(font.getlength(text), 1)))
    while chars > 8 and any(font.getlength(line) > width for line in textwrap.wrap(text, chars)):
        chars -= 1
    return textwrap.wrap(text, chars) or [""]


def legend_entries(ds: DatasetFolder, samples: list[dict]) -> list[tuple[int, str]]:
    """The mask values shown, with their names: the classes present, then background and ignore."""
    split = {c["id"]: "seen" if c["seen"] else "unseen" for c in ds.classes}
    present = sorted({int(v) for s in samples for v in np.unique(s["mask"])} - {0, IGNORE_INDEX})
    return [*((cid, f"{cid} {ds.names[cid]} ({split[cid]})") for cid in present),
            (0, "0 background"), (IGNORE_INDEX, f"{IGNORE_INDEX} ignore")]


def contact_sheet(ds: DatasetFolder, samples: list[dict], title: str) -> Image.Image:
    """Samples in a grid, each image | mask with its prompt and key beneath; the title above, the legend below."""
    font = ImageFont.load_default(size=12)
    pairs = [pair(s["image"], s["mask"]) for s in samples]
    caption_h = 4 + LINE * (CAPTION_LINES + 1)
    cells = [torch.nn.functional.pad(p, (0, 0, 0, caption_h), value=255) for p in pairs]
    columns = math.ceil(math.sqrt(len(samples)))
    grid = Image.fromarray(make_grid(cells, nrow=columns, padding=GAP, pad_value=255).permute(1, 2, 0).numpy())
    cell_w, cell_h = pairs[0].shape[2], pairs[0].shape[1] + caption_h
    width = max(grid.width, 480)
    title_lines = wrap_text(title, font, width - 2 * GAP)
    legend = legend_entries(ds, samples)
    entry_w = max(font.getlength(text) for _, text in legend) + 30
    per_row = max(1, int((width - 2 * GAP) // entry_w))
    top = GAP + LINE * len(title_lines)
    sheet = Image.new("RGB", (width, top + grid.height + LINE + math.ceil(len(legend) / per_row) * 20 + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for j, line in enumerate(title_lines):
        draw.text((GAP, GAP + j * LINE), line, fill="black", font=font)
    sheet.paste(grid, (0, top))
    for i, s in enumerate(samples):
        x = GAP + (i % columns) * (cell_w + GAP)
        y = top + GAP + (i // columns) * (cell_h + GAP) + pairs[0].shape[1] + 4
        caption = wrap_text(str(s["meta"].get("prompt", "")), font, cell_w)[:CAPTION_LINES]
        for j, text in enumerate([*caption, s["key"]]):
            draw.text((x, y + j * LINE), text, fill="black" if j < len(caption) else "gray", font=font)
    y = top + grid.height
    draw.text((GAP, y), "legend (mask colours):", fill="black", font=font)
    for k, (value, text) in enumerate(legend):
        x, yy = GAP + (k % per_row) * entry_w, y + LINE + (k // per_row) * 20
        draw.rectangle((x, yy, x + 14, yy + 14), fill=class_colour(value), outline="black")
        draw.text((x + 20, yy), text, fill="black", font=font)
    return sheet


def show(ds: DatasetFolder, n: int, class_name: str | None, save: Path, seed: int | None = None) -> Path:
    """Write the contact sheet PNG to ``save`` (atomically) and return its path; ``seed``: n samples drawn at
    random with it, else the first n."""
    if n < 1:
        raise DataError(f"--n {n}: show at least one sample")
    samples = pick_samples(ds, n, class_name, seed)
    preset = ds.manifest.get("config", {}).get("preset_name", "?")
    which = f"drawn at random (seed {seed})" if seed is not None else "the first in shard order"
    count = f"{len(samples)} sample{'s' if len(samples) != 1 else ''}"
    title = f"{ds.out.name}: {count}{f' with {class_name} pixels' if class_name else ''}, {which}, " \
            f"preset {preset}; each image beside its mask"
    make_folder(save.parent)
    png = io.BytesIO()
    contact_sheet(ds, samples, title).save(png, format="PNG")
    write_bytes_atomic(save, png.getvalue())
    return save
