"""`datagen stats`: what a dataset holds, from its shard stats and a read of every shard (image and mask sizes)."""

from __future__ import annotations

import json
from collections import Counter

from rich.console import Console
from rich.table import Table

from pipeline.dataset.members import open_image
from pipeline.dataset.plan import ERRORED
from pipeline.dataset.reader import image_member
from pipeline.dataset.shards import sum_stats
from pipeline.inspect.folder import BadSample, DatasetFolder
from stages.errors import DataError


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)} if values else {}


def _size(data: bytes, member: str) -> str:
    with open_image(data, member) as image:  # reads the header only
        return f"{image.width}x{image.height}"


def scan_sizes(ds: DatasetFolder) -> tuple[Counter, Counter]:
    """Image and mask sizes ('WxH' -> samples): every shard is read whole (tar members are not
    seekable), each image's and mask's size comes from its header, no pixels are decoded."""
    images, masks = Counter(), Counter()
    for shard in ds.shards:
        for sample in ds.samples(shard):
            try:
                images[_size(image_member(sample), "the image")] += 1
                if "seg.png" in sample:
                    masks[_size(sample["seg.png"], "seg.png")] += 1
            except DataError as err:
                raise BadSample(shard, sample["__key__"], str(err)) from err
    return images, masks


def dataset_stats(ds: DatasetFolder, scan: bool = True) -> dict:
    """Counts, per-class and per-split pixel shares and instances, failure reasons, sizes, shard sizes.

    Pixel shares are instance areas (disjoint per sample) over all pixels written; without ``scan``
    every sample is taken to be the preset's image size.
    """
    stats = [ds.counted_stats(shard) for shard in ds.shards]
    totals = sum_stats(stats)
    written, failed = totals["written"], totals["failed"]
    instances, pixels = totals["class_instances"], totals["class_pixels"]
    side = ds.manifest.get("config", {}).get("preset", {}).get("image_size", 0)
    images, masks = scan_sizes(ds) if scan else (Counter({f"{side}x{side}": written}), Counter())
    total_pixels = sum(count * pixels_of(size) for size, count in images.items()) or 1
    classes = [{"id": c["id"], "name": c["name"], "split": "seen" if c["seen"] else "unseen",
                "instances": instances.get(c["name"], 0), "pixels": pixels.get(c["name"], 0),
                "pixel_share": round(pixels.get(c["name"], 0) / total_pixels, 6)} for c in ds.classes]
    splits = {split: {"classes": sum(c["split"] == split for c in classes),
                      "classes_present": sum(c["split"] == split and c["instances"] > 0 for c in classes),
                      "instances": sum(c["instances"] for c in classes if c["split"] == split),
                      "pixel_share": round(sum(c["pixel_share"] for c in classes if c["split"] == split), 6)}
              for split in ("seen", "unseen")}
    sizes = [shard.stat().st_size for shard in ds.shards]
    return {
        "out": str(ds.out), "format_version": ds.manifest["format_version"],
        "fingerprint": ds.manifest.get("fingerprint"), "vocabulary": ds.manifest["vocabulary"].get("name"),
        "samples": {"planned": totals["planned"], "written": written,
                    "filtered": sum(v for k, v in failed.items() if not k.startswith(ERRORED)),
                    "errored": sum(v for k, v in failed.items() if k.startswith(ERRORED))},
        "failures": failed,
        "background_pixel_share": round(1 - sum(c["pixel_share"] for c in classes), 6),
        "classes": classes, "splits": splits,
        "image_sizes": dict(images), "mask_sizes": dict(masks),
        "shards": {"count": len(stats), "samples": _spread([s["written"] for s in stats]),
                   "mb": _spread([round(b / 1e6, 3) for b in sizes]), "total_mb": round(sum(sizes) / 1e6, 3),
                   "mb_per_sample": round(sum(sizes) / 1e6 / max(written, 1), 4)},
    }


def pixels_of(size: str) -> int:
    width, _, height = size.partition("x")
    return int(width) * int(height)


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "-"


def print_stats(stats: dict, console: Console, as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats, indent=1))
        return
    s = stats["samples"]
    console.print(f"[bold]{stats['out']}[/]: {s['written']} samples of {s['planned']} planned "
                  f"({s['filtered']} filtered, {s['errored']} errored) in {stats['shards']['count']} shards, "
                  f"vocabulary {stats['vocabulary']}, format {stats['format_version']}", highlight=False)
    table = Table(title="classes")
    for column, justify in (("id", "right"), ("class", "left"), ("split", "left"), ("instances", "right"),
                            ("pixel share", "right")):
        table.add_column(column, justify=justify)
    for c in stats["classes"]:
        table.add_row(str(c["id"]), c["name"], c["split"], str(c["instances"]), f"{c['pixel_share']:.2%}")
    table.add_row("0", "background", "", "", f"{stats['background_pixel_share']:.2%}")
    console.print(table)
    splits = Table(title="seen vs unseen")
    for column in ("split", "classes present", "instances", "pixel share"):
        splits.add_column(column, justify="left" if column == "split" else "right")
    for name, split in stats["splits"].items():
        splits.add_row(name, f"{split['classes_present']}/{split['classes']}", str(split["instances"]),
                       f"{split['pixel_share']:.2%}")
    console.print(splits)
    failures = ", ".join(f"{k}: {v}" for k, v in stats["failures"].items()) or "none"
    console.print(f"failed samples by reason: {failures}", highlight=False)
    console.print(f"image sizes: {_counts(stats['image_sizes'])}; mask sizes: {_counts(stats['mask_sizes'])}",
                  highlight=False)
    sh = stats["shards"]
    console.print(f"shards: {sh['count']}, samples per shard {sh['samples']['min']}..{sh['samples']['max']}, "
                  f"{sh['mb']['min']}..{sh['mb']['max']} MB each, {sh['total_mb']} MB in all "
                  f"({sh['mb_per_sample']} MB per sample)", highlight=False)
