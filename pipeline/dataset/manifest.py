"""The output folder: refusing a folder that holds something else, the per-machine lock, the manifest
and the classes file. It takes plain values (``OutputOwner``, dicts) from the run layer, so the
dataset format depends on no config or model code."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from pipeline.dataset.atomic import (
    create_exclusive,
    make_folder,
    remove_stale_temporaries,
    temporary_path,
    write_json_atomic,
    write_text_atomic,
)
from pipeline.dataset.checkpoint import training_record
from pipeline.dataset.layout import (
    CLASSES,
    DATA_DIR,
    EVAL_DIR,
    FORMAT_VERSION,
    GROUNDING_DIR,
    MANIFEST,
    ORACLE_DIR,
    RESUME_DIR,
)
from pipeline.dataset.location import STORE_ERRORS, check_reachable, is_remote, names, store_error
from pipeline.dataset.provenance import code_version, model_record, oracle_record
from pipeline.dataset.shards import finished_stats, finished_stats_by_id, read_json_object, shard_name
from pipeline.dataset.zero_shot import LABELS, labels_entry
from stages.errors import ConfigError
from stages.metrics import IGNORE_INDEX
from stages.vocab import Vocabulary

PROBE = ".datagen-probe"  # the name of check_writable's probe (a probe a failed delete left is not data)
SHARDS = "shards"  # the manifest's shard digests: "data/shard-000000.tar" -> sha256
PACKAGES = ("datagen", "torch", "torchvision", "diffusers", "transformers", "webdataset", "pycocotools")


class OutputOwner(Protocol):
    """What the output contract needs of a run (``pipeline.config.RunConfig`` is one)."""

    out: Any  # a local Path, or an object store's UPath
    n: int  # phase C's samples
    cache_dir: Path  # where the per-machine lock lives

    def fingerprint(self) -> str: ...


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_output(config: OutputOwner, labelling: bool = True) -> None:
    """Refuse an output folder that holds another dataset or something else; writes nothing.

    ``labelling``: phase C will run, so samples beyond ``config.n`` already on disk are refused too.
    """
    out = config.out
    check_reachable(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            old = read_json_object(manifest_path)
        except ValueError as err:
            raise ConfigError(f"{manifest_path} is damaged ({err}): it cannot tell which config made {out}, so "
                              "nothing there is touched; restore it, or choose another --out") from err
        if not whole_manifest(old):
            raise ConfigError(f"{manifest_path} is damaged (its config or vocabulary is not what datagen writes): it "
                              f"cannot tell which config made {out}, so nothing there is touched; restore it, or "
                              "choose another --out")
        if old.get("fingerprint") != config.fingerprint():
            raise ConfigError(
                f"{out} holds a dataset made with another config (fingerprint {old.get('fingerprint')}, "
                f"this run {config.fingerprint()}); choose another --out or delete that folder")
    elif any(not _grounding_output(name) and not name.startswith(PROBE) for name in names(out)):
        raise ConfigError(f"{out} exists, is not empty and is not a datagen dataset; choose another --out")
    written_to = max((s["end"] for s in finished_stats(out / DATA_DIR)), default=0) if labelling else 0
    if written_to > config.n:
        raise ConfigError(f"{out} already holds samples 0..{written_to - 1}, more than --n {config.n}; "
                          f"pass --n {written_to} or more, or choose another --out")


def whole_manifest(manifest: dict) -> bool:
    """The parts of a manifest that readers and reruns use, where present, are the types datagen writes."""
    vocabulary, config = manifest.get("vocabulary", {}), manifest.get("config", {})
    return isinstance(vocabulary, dict) and whole_class_list(vocabulary.get("classes", [])) \
        and isinstance(config, dict) and isinstance(config.get("preset", {}), dict)


def whole_class_list(entries) -> bool:
    """A class list as classes.json and the manifest's vocabulary hold it: distinct ids 1..254, names, seen."""
    return isinstance(entries, list) and all(
        isinstance(c, dict) and type(c.get("id")) is int and 0 < c["id"] < 255 and isinstance(c.get("name"), str)
        and isinstance(c.get("seen"), bool) for c in entries) and len({c["id"] for c in entries}) == len(entries)


def check_writable(out: Path) -> None:
    """Refuse, before any work, an --out that cannot be written here: a file stands in its path, or a
    folder cannot be made in its nearest existing folder (a read-only file system, no permission, a
    virtual file system such as /proc), tried with an empty probe folder removed at once. On an object
    store, an empty probe object is written and deleted (no bucket, no credentials, no permission)."""
    if is_remote(out):
        probe = temporary_path(out / PROBE)
        try:
            probe.fs.pipe_file(probe.path, b"")
            probe.fs.rm_file(probe.path)  # datagen deletes there too (a checkpoint's marker, its resume state)
        except STORE_ERRORS as err:
            raise ConfigError(f"--out {out}: cannot write there ({store_error(err)})") from err
        return
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder")
    probe = temporary_path(existing / ".datagen-probe")
    try:
        probe.mkdir()
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write in {existing} ({err.strerror or err})") from err
    probe.rmdir()


def _grounding_output(name: str) -> bool:
    """What `datagen train-annotated` (a checkpoint, its resume folder, their temporaries) and `datagen eval
    grounding` write in a folder before it holds a dataset: `datagen label` may make that folder its dataset,
    and a rerun of `train-annotated` resumes there."""
    return name.startswith((GROUNDING_DIR, RESUME_DIR)) or name == EVAL_DIR


@contextmanager
def output_lock(config: OutputOwner) -> Iterator[None]:
    """Hold an exclusive lock on the output folder (kept in the cache, so no stray file in OUT). The lock
    file is removed on release, while still locked: a process that opened it meanwhile finds, once it
    holds its lock, that the name points elsewhere, and locks the name's new file instead."""
    where = str(config.out) if is_remote(config.out) else str(config.out.resolve())
    key = hashlib.sha256(where.encode()).hexdigest()[:16]
    path = make_folder(config.cache_dir / "locks") / f"{key}.lock"
    while True:
        handle = open(path, "a")  # held open for the whole block, closed below
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(f"another datagen process is writing to {config.out}; wait for it or choose "
                              "another --out") from None
        if _same_file(handle, path):
            break
        handle.close()  # locked a file its previous holder removed: lock the one the name now gives
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def _same_file(handle, path: Path) -> bool:
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def claim_output(config: OutputOwner, manifest: dict, labelling: bool) -> None:
    """Write the manifest of a new output folder with an exclusive create, or refresh it in a folder
    this config already owns. Two runs started at once on one shared folder (the lock is per
    machine) cannot both claim it: the loser finds the winner's manifest and its fingerprint check
    refuses a different config (the same config writes the same bytes, so it may share the folder)."""
    path = config.out / MANIFEST
    text = json.dumps(manifest, indent=1, sort_keys=True)
    if create_exclusive(path, text.encode()):
        return
    check_output(config, labelling)  # a manifest is there: only the config that owns it goes on
    write_text_atomic(path, text)


def prepare_output(config: OutputOwner, manifest: dict, vocabulary: Vocabulary, folders: tuple[str, ...],
                   labelling: bool) -> None:
    """Create or reopen the output folder, its shard ``folders``, and (re)write its manifest (``manifest``
    with the format version, the packages and the time added) and classes file."""
    out = config.out
    check_output(config, labelling)
    make_folder(out)
    kept = {k: v for k, v in _read_manifest(out).items() if k == LABELS}  # what labelled the shards on disk
    claim_output(config, kept | manifest | {
        "format_version": FORMAT_VERSION, "fingerprint": config.fingerprint(), "vocabulary": vocabulary.to_dict(),
        "code": code_version(), "packages": package_versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, labelling)
    for sub in folders:
        remove_stale_temporaries(make_folder(out / sub))
    write_json_atomic(out / CLASSES, classes_file(vocabulary))
    record_shards(out)  # the rewritten manifest keeps the digests of the shards already on disk


def model_records(sd_source: str, oracle_source: str | None, oracle_backend: str, oracle_config: str | None) -> dict:
    """The manifest's model entries: where the models came from and their revisions (no oracle: None)."""
    return {"models": {"stable_diffusion": sd_source, "oracle": oracle_source},
            "model_revisions": {"stable_diffusion": model_record(sd_source), "oracle": oracle_record(
                oracle_backend, oracle_config, oracle_source) if oracle_source else None}}


def classes_file(vocabulary: Vocabulary) -> dict:
    """What ``classes.json`` holds: the mask values of the vocabulary's classes, background and ignore."""
    return {"background": 0, "ignore": IGNORE_INDEX,
            "classes": [{"id": c.id, "name": c.name, "seen": c.seen} for c in vocabulary.classes]}


def restore_classes(config: OutputOwner, vocabulary: Vocabulary) -> bool:
    """Rewrite ``classes.json`` of a finished dataset if it is missing, damaged or not this vocabulary's
    (what `datagen validate` and `show` tell the user to rerun the run command for); True if it was.
    Runs under the output lock."""
    path = config.out / CLASSES
    try:
        if read_json_object(path) == classes_file(vocabulary):
            return False
    except ValueError:
        pass
    write_json_atomic(path, classes_file(vocabulary))
    return True


def _read_manifest(out) -> dict:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def record_labeller(config: OutputOwner, labeler: dict, training_record: dict | None) -> dict:
    """Before phase C labels shards: keep in the manifest's ``labels`` what labels the dataset (``labeler``:
    ``Labeler.provenance``) and whether its labels are zero-shot (``pipeline.dataset.zero_shot.labels_entry``);
    returns that entry. Runs under the output lock, after ``prepare_output``."""
    manifest = _read_manifest(config.out)
    has_shards = bool(finished_stats(config.out / DATA_DIR))
    entry = labels_entry(manifest.get(LABELS), labeler, training_record, has_shards)
    write_text_atomic(config.out / MANIFEST, json.dumps(manifest | {LABELS: entry}, indent=1, sort_keys=True))
    return entry


def record_shards(out) -> dict[str, str]:
    """Keep in the manifest the sha256 of every finished shard (in ``data/`` and ``oracle/``) as its stats
    recorded it while the shard was written, for `datagen validate` and for copies checked elsewhere; returns
    them. Shards written before datagen recorded digests are left out. Runs under the output lock."""
    digests = {f"{folder}/{shard_name(sid)}.tar": stats["sha256"] for folder in (ORACLE_DIR, DATA_DIR)
               for sid, stats in finished_stats_by_id(out / folder).items() if isinstance(stats.get("sha256"), str)}
    manifest = _read_manifest(out)
    if manifest and manifest.get(SHARDS) != digests:
        write_text_atomic(out / MANIFEST, json.dumps(manifest | {SHARDS: digests}, indent=1, sort_keys=True))
    return digests


def made_with(out) -> dict | None:
    """What ``out``'s dataset was made with, for commands that take their defaults from it: ``vocab``,
    ``models`` and ``n`` (the --vocab, --models and --n it was made with, None where not recorded) and
    ``vocabulary`` (its classes, or None), from its manifest, else from the record of a grounding checkpoint `datagen
    train-annotated` wrote there. None for a folder with neither; a damaged manifest is one line."""
    check_reachable(out)
    path = out / MANIFEST
    if path.exists():
        try:
            config = read_json_object(path)
        except ValueError as err:
            raise ConfigError(f"{path} is damaged ({err}): it cannot tell which vocabulary and models made {out}") \
                from err
        if not whole_manifest(config):
            raise ConfigError(f"{path} is damaged: it cannot tell which vocabulary and models made {out}")
        return _made(config.get("config", {})) | {"vocabulary": config.get("vocabulary")}
    record = training_record(out)
    return _made(record) | {"vocabulary": None} if record and (record.get("vocab") or record.get("preset_name")) \
        else None


def _made(entry: dict) -> dict:
    """A manifest's config or a training record: the --vocab, --models and --n it names (None: not recorded)."""
    return {"vocab": entry.get("vocab") if isinstance(entry.get("vocab"), str) else None,
            "models": entry.get("preset_name") if isinstance(entry.get("preset_name"), str) else None,
            "n": entry.get("n") if type(entry.get("n")) is int else None}
