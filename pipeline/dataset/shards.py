"""Shard files: atomic WebDataset writing, per-shard stats, and finding finished shards.

A shard is written to a temporary name and renamed into place (``atomic``); its ``.stats.json`` is
written last. A shard without stats does not exist: a rerun redoes it.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.dataset.atomic import replacing, write_json_atomic

SHARD_MTIME = 0.0  # fixed tar member times: same config and seed give byte-identical shards


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}"


def shard_path(folder: Path, shard_id: int) -> Path:
    return Path(folder) / f"{shard_name(shard_id)}.tar"


def stats_path(folder: Path, shard_id: int) -> Path:
    return Path(folder) / f"{shard_name(shard_id)}.stats.json"


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
    else:
        Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    """uint8 class-index mask as a single-channel PNG (mode L): decodes to indices, never RGB."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def encode_array(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path``; ValueError saying what is wrong ("not valid JSON (...)", "not a JSON
    object") when it is unreadable or not an object, for the caller to name the file and the remedy."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def write_shard(folder: Path, shard_id: int, samples: list[dict[str, bytes | str]], stats: dict) -> None:
    """Write samples (``__key__`` plus encoded members) as one shard, then its stats, atomically."""
    with replacing(shard_path(folder, shard_id)) as tmp, open(tmp, "wb") as stream, \
            wds.TarWriter(stream, encoder=False, mtime=SHARD_MTIME) as writer:
        for sample in samples:
            writer.write(sample)
    write_json_atomic(stats_path(folder, shard_id), stats)


def read_stats(folder: Path, shard_id: int) -> dict | None:
    """Stats of a finished shard, or None if the shard is not finished."""
    return _finished_stats_file(stats_path(folder, shard_id))


def _finished_stats_file(path: Path) -> dict | None:
    """A stats file's content if its shard exists and the stats are whole JSON, else None."""
    if not path.exists() or not path.with_name(path.name.replace(".stats.json", ".tar")).exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def finished_shards(folder: Path) -> list[Path]:
    """Paths of every finished shard in a folder, in order."""
    return sorted(p.with_name(p.name.replace(".stats.json", ".tar"))
                  for p in Path(folder).glob("shard-*.stats.json")
                  if p.with_name(p.name.replace(".stats.json", ".tar")).exists())


def finished_stats(folder: Path) -> list[dict]:
    """The stats of every finished shard in a folder, in shard order."""
    stats = (_finished_stats_file(p) for p in sorted(Path(folder).glob("shard-*.stats.json")))
    return [s for s in stats if s is not None]


def summarize(folder: Path) -> dict:
    """Totals over every finished shard's stats in a folder."""
    return sum_stats(finished_stats(folder))


def sum_stats(shard_stats: list[dict]) -> dict:
    """Totals over shards' stats: shards, planned, written, failures by reason, per-class instances and pixels."""
    written, planned, failed, instances, pixels = 0, 0, Counter(), Counter(), Counter()
    for stats in shard_stats:
        written += stats["written"]
        planned += stats["planned"]
        failed.update(stats.get("failed", {}))
        instances.update(stats.get("class_instances", {}))
        pixels.update(stats.get("class_pixels", {}))
    return {"shards": len(shard_stats), "planned": planned, "written": written, "failed": dict(sorted(failed.items())),
            "class_instances": dict(sorted(instances.items())), "class_pixels": dict(sorted(pixels.items()))}
