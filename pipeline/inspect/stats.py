"""`datagen stats`: what a dataset holds, from its shards' stats (sidecars): no shard is read, except one whose
stats were written before datagen counted background and ignore pixels and sizes (then its masks are)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.dataset.plan import ERRORED
from pipeline.dataset.shards import sum_stats
from pipeline.dataset.tally import MASK_COUNTS, Tally
from pipeline.inspect.folder import BadSample, DatasetFolder
from stages.errors import DataError


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)} if values else {}


def shard_counts(ds: DatasetFolder, shard: Path) -> dict:
    """The shard's stats, with the counts of ``MASK_COUNTS`` counted from its samples where its stats predate
    them; DataError (one line) where they cannot be added up or the shard is not the size they recorded."""
    stats = ds.counted_stats(shard)
    size = shard.stat().st_size
    if type(stats.get("bytes")) is int and stats["bytes"] != size:
        raise DataError(f"{shard} is {size} bytes, its stats say {stats['bytes']} were written: truncated or "
                        "replaced since; run `datagen validate`")
    if all(k in stats for k in MASK_COUNTS):
        return stats | {"bytes": size}
    tally = Tally(masks=True)
    for sample in ds.samples(shard):
        try:
            tally.add_sample(sample, ds.image)
        except DataError as err:
            raise BadSample(shard, sample["__key__"], str(err)) from err
    return stats | {k: v for k, v in tally.counts().items() if k in MASK_COUNTS} | {"bytes": size}


def dataset_stats(ds: DatasetFolder, advance: Callable[[int], None] = lambda k: None) -> dict:
    """Counts, per-class and per-split pixel shares and instances, background and ignore shares, failure
    reasons, sizes, shard sizes; ``advance(1)`` after each shard.

    Pixel shares are over all pixels written: instance areas (disjoint per sample) for the classes, and
    the mask's 0 (background) and 255 (ignore, e.g. the attention labeler's uncertain band) pixels.
    """
    stats = []
    for shard in ds.shards:
        stats.append(shard_counts(ds, shard))
        advance(1)
    totals = sum_stats(stats)
    written, failed = totals["written"], totals["failed"]
    instances, pixels = totals["class_instances"], totals["class_pixels"]
    total_pixels = sum(count * pixels_of(size) for size, count in totals["image_sizes"].items()) or 1
    classes = [{"id": c["id"], "name": c["name"], "split": "seen" if c["seen"] else "unseen",
                "instances": instances.get(c["name"], 0), "pixels": pixels.get(c["name"], 0),
                "pixel_share": round(pixels.get(c["name"], 0) / total_pixels, 6)} for c in ds.classes]
    splits = {split: {"classes": sum(c["split"] == split for c in classes),
                      "classes_present": sum(c["split"] == split and c["instances"] > 0 for c in classes),
                      "instances": sum(c["instances"] for c in classes if c["split"] == split),
                      "pixel_share": round(sum(c["pixel_share"] for c in classes if c["split"] == split), 6)}
              for split in ("seen", "unseen")}
    sizes = [s["bytes"] for s in stats]
    return {
        "out": str(ds.out), "format_version": ds.manifest["format_version"],
        "fingerprint": ds.manifest.get("fingerprint"), "vocabulary": ds.manifest["vocabulary"].get("name"),
        "samples": {"planned": totals["planned"], "written": written,
                    "filtered": sum(v for k, v in failed.items() if not k.startswith(ERRORED)),
                    "errored": sum(v for k, v in failed.items() if k.startswith(ERRORED))},
        "failures": failed,
        "background_pixel_share": round(totals["background_pixels"] / total_pixels, 6),
        "ignore_pixel_share": round(totals["ignore_pixels"] / total_pixels, 6),
        "classes": classes, "splits": splits,
        "image_sizes": totals["image_sizes"], "mask_sizes": totals["mask_sizes"],
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
    table.add_row("255", "ignore", "", "", f"{stats['ignore_pixel_share']:.2%}")
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
