"""Shard files: atomic WebDataset writing, per-shard stats, and finding finished shards.

A shard is written to a temporary name and renamed into place (``atomic``; on an object store, uploaded
whole); its stats (``.shard-NNNNNN.stats.json``) are written last, with the shard's sha256 and size in
bytes, hashed as it is written. A shard without stats does not exist: a rerun redoes it. Finding
finished shards lists their folder once (``location.names``), then reads each one's stats. The stats
are hidden files (a leading dot) so that a shard folder holds only shards for tools that take every
file in it (Hugging Face ``datasets`` infers its builder from the files' extensions and skips hidden
ones); stats beside the shard under the name datagen wrote before (``shard-NNNNNN.stats.json``,
``legacy_stats_path``) are still read.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pipeline.dataset.atomic import replacing, write_json_atomic
from pipeline.dataset.location import names

SHARD_MTIME = 0.0  # fixed tar member times: same config and seed give byte-identical shards


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}"


def shard_id(shard: Path) -> int:
    """The id of a shard path (``shard-000001.tar`` -> 1)."""
    return int(shard.name.removeprefix("shard-").removesuffix(".tar"))


def shard_path(folder: Path, shard_id: int) -> Path:
    return folder / f"{shard_name(shard_id)}.tar"


def stats_path(folder: Path, shard_id: int) -> Path:
    """Where a shard's stats are written: a hidden file beside it."""
    return folder / f".{shard_name(shard_id)}.stats.json"


def legacy_stats_path(folder: Path, shard_id: int) -> Path:
    """Where datasets written before the stats were hidden keep them (read, never written)."""
    return folder / f"{shard_name(shard_id)}.stats.json"


def stats_file(folder: Path, shard_id: int, present: set[str]) -> Path:
    """The shard's stats file among a folder's entry names: the hidden one, or the legacy one when only
    that is present."""
    path = stats_path(folder, shard_id)
    legacy = legacy_stats_path(folder, shard_id)
    return legacy if path.name not in present and legacy.name in present else path


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
        data = json.loads(path.read_bytes())
    except RecursionError as err:
        raise ValueError("not valid JSON (nested too deeply)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


class HashingStream:
    """A stream that feeds ``digest`` every byte written to or read from it and counts them: a shard is
    hashed as it is written, and as `datagen validate` reads it, with no second pass over the file."""

    def __init__(self, stream, digest=None) -> None:
        self.stream, self.digest, self.bytes = stream, digest if digest is not None else hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        return self.stream.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.bytes += len(data)
        return data


def write_shard(folder: Path, shard_id: int, samples: Iterable[dict[str, bytes | str]], stats: dict) -> dict:
    """Write samples (``__key__`` plus encoded members) as one shard, then its stats with the shard's
    ``sha256`` and ``bytes``, atomically; the stats written."""
    with replacing(shard_path(folder, shard_id)) as tmp, open(tmp, "wb") as stream:
        hashing = HashingStream(stream)
        with wds.TarWriter(hashing, encoder=False, mtime=SHARD_MTIME) as writer:
            for sample in samples:
                writer.write(sample)
    stats = stats | {"sha256": hashing.digest.hexdigest(), "bytes": hashing.bytes}
    write_json_atomic(stats_path(folder, shard_id), stats)
    return stats


def read_stats(folder: Path, shard_id: int) -> dict | None:
    """Stats of a finished shard, or None if the shard is not finished (to find many, list their folder
    once: ``finished_stats_by_id``)."""
    if not shard_path(folder, shard_id).exists():
        return None
    path, legacy = stats_path(folder, shard_id), legacy_stats_path(folder, shard_id)
    return _stats_content(legacy if not path.exists() and legacy.exists() else path)


def _stats_content(path: Path) -> dict | None:
    """A stats file's content if it is a whole JSON object, else None."""
    try:
        stats = json.loads(path.read_bytes())
    except (FileNotFoundError, UnicodeDecodeError, RecursionError, json.JSONDecodeError):
        return None
    return stats if isinstance(stats, dict) else None


def finished_ids(present: set[str]) -> list[int]:
    """Ids of the shards with both the tar and its stats (hidden, or legacy) among a folder's entry names,
    in order."""
    stems = (name.removeprefix(".").removesuffix(".stats.json") for name in present if name.endswith(".stats.json"))
    ids = {i for stem in stems if stem.startswith("shard-") and (i := stem.removeprefix("shard-")).isdigit()}
    return sorted(int(i) for i in ids if shard_name(int(i)) == f"shard-{i}" and f"shard-{i}.tar" in present)


def finished_stats_by_id(folder: Path) -> dict[int, dict]:
    """Shard id -> stats content of every finished shard in ``folder`` whose stats are a JSON object."""
    present = names(folder)
    stats = {shard_id: _stats_content(stats_file(folder, shard_id, present)) for shard_id in finished_ids(present)}
    return {shard_id: s for shard_id, s in stats.items() if s is not None}


COUNTS = ("shard", "start", "end", "planned", "written")  # what a run's stats count, as integers
TALLIES = ("failed", "class_instances", "class_pixels")  # name -> integer count
LATER_COUNTS = ("background_pixels", "ignore_pixels", "bytes")  # integers, in stats written since they were added
LATER_TALLIES = ("image_sizes", "mask_sizes")


def whole_stats(stats: dict | None) -> bool:
    """Stats a run can add up: integer counts and tallies. A shard whose stats are not (a damaged file)
    is unfinished: a rerun redoes it, and `datagen validate` names it."""
    def counts(tally) -> bool:
        return isinstance(tally, dict) and all(type(v) is int for v in tally.values())

    return isinstance(stats, dict) and all(type(stats.get(k)) is int for k in COUNTS) \
        and all(counts(stats.get(k, {})) for k in TALLIES + LATER_TALLIES) \
        and all(type(stats[k]) is int for k in LATER_COUNTS if k in stats)


def finished_shards(folder: Path) -> list[Path]:
    """Paths of every finished shard in a folder, in order."""
    return [shard_path(folder, shard_id) for shard_id in finished_ids(names(folder))]


def finished_stats(folder: Path) -> list[dict]:
    """The stats of every finished shard in a folder, in shard order (whole ones: see ``whole_stats``)."""
    return [s for s in finished_stats_by_id(folder).values() if whole_stats(s)]


def summarize(folder: Path) -> dict:
    """Totals over every finished shard's stats in a folder."""
    return sum_stats(finished_stats(folder))


def sum_stats(shard_stats: list[dict]) -> dict:
    """Totals over shards' stats: shards, planned, written, failures by reason, per-class instances and pixels,
    background and ignore pixels, image and mask sizes (the last four count only shards whose stats have them)."""
    tallies = {k: Counter() for k in ("failed", "class_instances", "class_pixels", *LATER_TALLIES)}
    written = planned = background = ignore = 0
    for stats in shard_stats:
        written += stats["written"]
        planned += stats["planned"]
        background += stats.get("background_pixels", 0)
        ignore += stats.get("ignore_pixels", 0)
        for name, tally in tallies.items():
            tally.update(stats.get(name, {}))
    return {"shards": len(shard_stats), "planned": planned, "written": written,
            **{name: dict(sorted(tally.items())) for name, tally in tallies.items()},
            "background_pixels": background, "ignore_pixels": ignore}
