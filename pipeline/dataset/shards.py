"""Shard files: atomic WebDataset writing, per-shard stats, and finding finished shards.

A shard is written to a temporary name and renamed into place; its ``.stats.json`` is written
last. A shard without stats does not exist: a rerun redoes it. Temporary names end in
``.tmp<uuid4>``: writers on many machines share one folder, where process ids collide.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

SHARD_MTIME = 0.0  # fixed tar member times: same config and seed give byte-identical shards
STALE_TEMPORARY_SECONDS = 3600  # a temporary untouched this long has no live writer


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


def temporary_path(path: Path) -> Path:
    """A name to write ``path``'s content under before renaming it into place, unique across machines."""
    return Path(f"{path}.tmp{uuid.uuid4().hex}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes under a temporary name and rename it into place; no temporary is left on failure."""
    tmp = temporary_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


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
    final = shard_path(folder, shard_id)
    tmp = temporary_path(final)
    try:
        with open(tmp, "wb") as stream:
            with wds.TarWriter(stream, encoder=False, mtime=SHARD_MTIME) as writer:
                for sample in samples:
                    writer.write(sample)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
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


def remove_stale_temporaries(folder: Path, max_age: float = STALE_TEMPORARY_SECONDS) -> None:
    """Delete temporaries left by a killed run (never a finished shard): those not modified for
    ``max_age`` seconds. A younger one may belong to a run of the same config writing to this folder
    now (from another machine, too: the per-machine lock cannot tell), and a writer finishes a
    temporary within seconds, so age alone tells a stale temporary from a live one."""
    cutoff = time.time() - max_age
    for tmp in Path(folder).glob("*.tmp*"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink(missing_ok=True)
        except FileNotFoundError:  # renamed into place or removed by its writer meanwhile
            pass
