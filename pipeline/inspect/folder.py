"""A dataset folder opened for reading: manifest, classes and finished shards, with one-line errors.

Every inspection command starts here, so a missing folder, a folder that is not a datagen dataset,
a manifest from a newer format and a truncated shard read the same way everywhere.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from pipeline.dataset.layout import FORMAT_VERSION, Phase
from pipeline.dataset.location import check_reachable, location
from pipeline.dataset.manifest import whole_class_list, whole_manifest
from pipeline.dataset.members import RepeatedMember, group_members
from pipeline.dataset.shards import (
    HashingStream,
    finished_shards,
    read_json_object,
    read_stats,
    shard_id,
    stats_path,
    whole_stats,
)
from stages.errors import DataError


class CorruptShard(DataError):
    def __init__(self, shard: Path, key: str | None, problem: str):
        where = f"at key {key}" if key else "at its start"
        super().__init__(f"{shard} is truncated or corrupt ({where}): {problem}; run `datagen validate`")
        self.shard, self.key, self.problem = shard, key, problem


class BadSample(DataError):
    """A sample whose members do not decode or are not the format (``pipeline.dataset.members``)."""

    def __init__(self, shard: Path, key: str, problem: str):
        super().__init__(f"{shard} key {key}: {problem}; run `datagen validate`")


def _read_json(path: Path, what: str) -> dict:
    try:
        return read_json_object(path)
    except ValueError as err:
        raise DataError(f"{path} is {err}; {what}") from err


@dataclass
class DatasetFolder:
    out: Path
    manifest: dict
    classes: list[dict]  # classes.json's entries: id, name, seen
    folder: Path  # the shard folder read (data/ or oracle/)
    phase: Phase  # LABEL (data/) or ORACLE (oracle/)
    shards: list[Path] = field(default_factory=list)  # finished shards, in order

    @property
    def members(self) -> set[str]:
        """The members every sample of this folder holds."""
        image = self.manifest.get("config", {}).get("image_format", "jpg")
        return {image, "json", "seg.png" if self.phase is Phase.LABEL else "latent.npy"}

    @property
    def image(self) -> str:
        """The name of the image member (``jpg`` or ``png``)."""
        return self.members.difference({"json", "seg.png", "latent.npy"}).pop()

    @property
    def names(self) -> dict[int, str]:
        return {c["id"]: c["name"] for c in self.classes}

    def stats(self, shard: Path) -> dict:
        """The shard's stats ({} when they are not a JSON object)."""
        stats = read_stats(self.folder, shard_id(shard))
        return stats if isinstance(stats, dict) else {}

    def counted_stats(self, shard: Path) -> dict:
        """The shard's stats, or DataError when they lack the counts summaries add up."""
        stats = self.stats(shard)
        if missing := [k for k in ("planned", "written") if type(stats.get(k)) is not int]:
            raise DataError(f"{stats_path(shard.parent, shard_id(shard))} has no {' or '.join(missing)} count: "
                               "not a finished datagen shard; run `datagen validate`")
        if not whole_stats(stats):
            raise DataError(f"{stats_path(shard.parent, shard_id(shard))} is damaged (its counts are not all "
                            "integers): not a finished datagen shard; run `datagen validate`")
        return stats

    def samples(self, shard: Path) -> Iterator[dict]:
        """The shard's samples, checked against its stats' count (a tar cut between members reads clean)."""
        count = 0
        for count, sample in enumerate(read_shard(shard), 1):
            if missing := self.members - sample.keys():
                raise CorruptShard(shard, sample["__key__"], f"sample {sample['__key__']} has no "
                                   f"{', '.join(sorted(missing))}")
            yield sample
        written = self.stats(shard).get("written")
        if type(written) is int and count != written:
            raise CorruptShard(shard, None, f"holds {count} samples, its stats say {written}")


def open_output(out: Path | str, phase: Phase = Phase.LABEL) -> DatasetFolder:
    """Open a datagen output folder for reading, or raise DataError with one line saying why not."""
    out = location(out)
    check_reachable(out)
    if not out.exists():
        raise DataError(f"{out}: no such folder")
    if not out.is_dir():
        raise DataError(f"{out} is a file, not a datagen dataset folder")
    if not (out / "manifest.json").exists():
        raise DataError(f"{out} is not a datagen dataset (no manifest.json)")
    manifest = _read_json(out / "manifest.json", "the dataset's manifest is damaged")
    version = manifest.get("format_version")
    if not isinstance(version, int) or "vocabulary" not in manifest:
        raise DataError(f"{out}/manifest.json is not a datagen manifest (no format_version or vocabulary)")
    if version > FORMAT_VERSION:
        raise DataError(f"{out} was written in dataset format {version}; this datagen reads format "
                           f"{FORMAT_VERSION} and older: upgrade datagen to read it")
    if not whole_manifest(manifest) or "classes" not in manifest["vocabulary"]:
        raise DataError(f"{out}/manifest.json is damaged (its config or vocabulary is not what datagen writes)")
    classes = _read_json(out / "classes.json", "rewrite it by rerunning the run command") \
        if (out / "classes.json").exists() else None
    if not classes or not isinstance(classes.get("classes"), list):
        raise DataError(f"{out} has no valid classes.json: not a complete datagen dataset")
    if not whole_class_list(classes["classes"]):
        raise DataError(f"{out}/classes.json is damaged (each class needs an id from 1 to 254, a name and seen); "
                        "rewrite it by rerunning the run command")
    phase = Phase(phase)
    folder = out / phase.folder
    shards = finished_shards(folder) if folder.is_dir() else []
    if not shards:
        raise DataError(f"{folder} holds no finished shards: run `datagen "
                           f"{phase.command}` first")
    return DatasetFolder(out, manifest, classes["classes"], folder, phase, shards)


def read_shard(shard: Path, digest=None) -> Iterator[dict]:
    """Samples of one shard as raw bytes per member (``__key__`` plus extensions), nothing decoded.

    Members are grouped by key as the training reader groups them (``members.group_members``); a tar
    that ends mid-member or a repeated member raises CorruptShard naming the shard and the key being read.
    ``digest`` (a hashlib object), when given, is fed every byte of the file as it is read, the tar's end
    included.
    """
    key = None

    def members(stream) -> Iterator[tuple[str, bytes]]:
        nonlocal key
        for member in wds.tariterators.tar_file_iterator(stream):
            key = member["fname"].partition(".")[0]  # the sample being read, for the message
            yield member["fname"], member["data"]

    try:
        with shard.open("rb") as stream:
            source = HashingStream(stream, digest) if digest is not None else stream
            yield from group_members(members(source))
            while digest is not None and source.read(1 << 20):  # the end-of-archive blocks tarfile skips
                pass
    except RepeatedMember as err:
        raise CorruptShard(shard, err.key, str(err)) from err
    except (tarfile.TarError, EOFError, OSError, io.UnsupportedOperation) as err:
        raise CorruptShard(shard, key, str(err).split(" @ ")[0]) from err
