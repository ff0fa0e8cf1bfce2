"""`datagen show`: a contact sheet of samples, masks overlaid in a fixed colour per class."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.dataset.atomic import make_folder, write_bytes_atomic
from pipeline.dataset.members import check_mask, decode_json, decode_mask, decode_rgb
from pipeline.dataset.reader import image_member
from pipeline.inspect.folder import BadSample, DatasetFolder
from stages.errors import DataError
from stages.metrics import IGNORE_INDEX

TILE = 192  # tile side in pixels; images are resized to it (masks with nearest neighbour)
CAPTION_LINES = 2
ALPHA = 0.5  # mask overlay opacity


def class_colour(class_id: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour map: the class id's bits spread over R, G, B from the top bit down."""
    r = g = b = 0
    for shift in range(7, -1, -1):
        r |= (class_id & 1) << shift
        g |= ((class_id >> 1) & 1) << shift
        b |= ((class_id >> 2) & 1) << shift
        class_id >>= 3
    return r, g, b


def pick_samples(ds: DatasetFolder, n: int, class_name: str | None) -> list[dict]:
    """The first n samples in shard order (those whose mask labels pixels ``class_name`` if given), decoded."""
    ids = {name: cid for cid, name in ds.names.items()}
    if class_name is not None and class_name not in ids:
        raise DataError(f"--class {class_name}: not in this dataset's vocabulary ({', '.join(ids)})")
    picked = []
    for shard in ds.shards:
        for sample in ds.samples(shard):
            try:
                mask = decode_mask(sample["seg.png"])
                if class_name is None or (mask == ids[class_name]).any():
                    meta, image = decode_json(sample["json"]), decode_rgb(image_member(sample), "the image")
                    check_mask(mask, image.shape, ds.names, "in the vocabulary")
                    picked.append({"key": sample["__key__"], "meta": meta, "image": Image.fromarray(image),
                                   "mask": mask})
            except DataError as err:
                raise BadSample(shard, sample["__key__"], str(err)) from err
            if len(picked) == n:
                return picked
    if not picked:
        raise DataError(f"no sample in {ds.out} has pixels labelled {class_name}")
    return picked


def overlay(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """The image at tile size with each class's pixels blended with its colour (ignore in white)."""
    rgb = np.asarray(image.resize((TILE, TILE), Image.Resampling.BILINEAR), dtype=np.float32)
    ids = np.asarray(Image.fromarray(mask).resize((TILE, TILE), Image.Resampling.NEAREST))
    palette = np.array([class_colour(i) if i != IGNORE_INDEX else (255, 255, 255) for i in range(256)], np.float32)
    labelled = (ids > 0)[..., None]
    blended = np.where(labelled, (1 - ALPHA) * rgb + ALPHA * palette[ids], rgb)
    return Image.fromarray(blended.round().astype(np.uint8))


def contact_sheet(ds: DatasetFolder, samples: list[dict], title: str) -> Image.Image:
    font = ImageFont.load_default(size=12)
    line = 15
    columns = math.ceil(math.sqrt(len(samples)))
    rows = math.ceil(len(samples) / columns)
    cell_h = TILE + 6 + line * (CAPTION_LINES + 1)
    present = sorted({int(i) for s in samples for i in np.unique(s["mask"]) if 0 < i != IGNORE_INDEX})
    legend_rows = math.ceil(len(present) / max(1, columns * TILE // 170)) if present else 1
    width = columns * (TILE + 8) + 8
    sheet = Image.new("RGB", (width, 30 + rows * cell_h + 20 + legend_rows * 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 8), title, fill="black", font=font)
    for i, s in enumerate(samples):
        x, y = 8 + (i % columns) * (TILE + 8), 30 + (i // columns) * cell_h
        sheet.paste(overlay(s["image"], s["mask"]), (x, y))
        caption = textwrap.wrap(str(s["meta"].get("prompt", "")), width=TILE // 6)[:CAPTION_LINES]
        for j, text in enumerate([*caption, s["key"]]):
            draw.text((x, y + TILE + 4 + j * line), text, fill="black" if j < len(caption) else "gray", font=font)
    split = {c["id"]: "seen" if c["seen"] else "unseen" for c in ds.classes}
    y = 30 + rows * cell_h + 8
    draw.text((8, y - 2), "legend:" if present else "legend: no class pixels in these samples",
              fill="black", font=font)
    per_row = max(1, (width - 70) // 170)
    for k, cid in enumerate(present):
        x, yy = 70 + (k % per_row) * 170, y + (k // per_row) * 20
        draw.rectangle((x, yy, x + 14, yy + 14), fill=class_colour(cid), outline="black")
        draw.text((x + 20, yy), f"{cid} {ds.names[cid]} ({split[cid]})", fill="black", font=font)
    return sheet


def show(ds: DatasetFolder, n: int, class_name: str | None, save: Path) -> Path:
    """Write the contact sheet PNG to ``save`` (atomically) and return its path."""
    if n < 1:
        raise DataError(f"--n {n}: show at least one sample")
    samples = pick_samples(ds, n, class_name)
    preset = ds.manifest.get("config", {}).get("preset_name", "?")
    title = f"{ds.out.name}: {len(samples)} samples{f' with {class_name}' if class_name else ''}, preset {preset}"
    make_folder(save.parent)
    png = io.BytesIO()
    contact_sheet(ds, samples, title).save(png, format="PNG")
    write_bytes_atomic(save, png.getvalue())
    return save
