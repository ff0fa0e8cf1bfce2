"""The output folder: refusing a folder that holds something else, the per-machine lock, the manifest
and the classes file."""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset.atomic import create_exclusive, remove_stale_temporaries, write_json_atomic, write_text_atomic
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
from pipeline.dataset.provenance import code_version, model_record, oracle_record
from pipeline.dataset.shards import finished_stats
from pipeline.dataset.zero_shot import LABELS, labels_entry
from stages.metrics import IGNORE_INDEX

PACKAGES = ("datagen", "torch", "torchvision", "diffusers", "transformers", "webdataset", "pycocotools")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_output(config: RunConfig, labelling: bool = True) -> None:
    """Refuse an output folder that holds another dataset or something else; writes nothing.

    ``labelling``: phase C will run, so samples beyond ``config.n`` already on disk are refused too.
    """
    out = config.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{manifest_path} is not valid JSON: {err}") from err
        if old.get("fingerprint") != config.fingerprint():
            raise ConfigError(
                f"{out} holds a dataset made with another config (fingerprint {old.get('fingerprint')}, "
                f"this run {config.fingerprint()}); choose another --out or delete that folder")
    elif out.exists() and any(not _grounding_output(p.name) for p in out.iterdir()):
        raise ConfigError(f"{out} exists, is not empty and is not a datagen dataset; choose another --out")
    written_to = max((s["end"] for s in finished_stats(out / DATA_DIR)), default=0) if labelling else 0
    if written_to > config.n:
        raise ConfigError(f"{out} already holds samples 0..{written_to - 1}, more than --n {config.n}; "
                          f"pass --n {written_to} or more, or choose another --out")


def _grounding_output(name: str) -> bool:
    """What `datagen train-annotated` (a checkpoint, its resume folder, their temporaries) and `datagen eval
    grounding` write in a folder before it holds a dataset: `datagen label` may make that folder its dataset,
    and a rerun of `train-annotated` resumes there."""
    return name.startswith((GROUNDING_DIR, RESUME_DIR)) or name == EVAL_DIR


@contextmanager
def output_lock(config: RunConfig) -> Iterator[None]:
    """Hold an exclusive lock on the output folder (kept in the cache, so no stray file in OUT)."""
    locks = config.cache_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(config.out.resolve()).encode()).hexdigest()[:16]
    with open(locks / f"{key}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another datagen process is writing to {config.out}; wait for it or choose "
                              "another --out") from None
        yield


def claim_output(config: RunConfig, manifest: dict, labelling: bool) -> None:
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


def prepare_output(config: RunConfig, sd_source: str, oracle_source: str, labelling: bool) -> None:
    """Create or reopen the output folder and (re)write its manifest and classes file."""
    out = config.out
    check_output(config, labelling)
    out.mkdir(parents=True, exist_ok=True)
    vocab = config.vocabulary()
    kept = {k: v for k, v in _read_manifest(out).items() if k == LABELS}  # what labelled the shards on disk
    claim_output(config, kept | {
        "format_version": FORMAT_VERSION, "fingerprint": config.fingerprint(),
        "config": config.model_dump(mode="json"), "vocabulary": vocab.to_dict(),
        "models": {"stable_diffusion": sd_source, "oracle": oracle_source},
        "model_revisions": {"stable_diffusion": model_record(sd_source), "oracle": oracle_record(
            config.preset.oracle_backend, config.preset.oracle_config, oracle_source)},
        "code": code_version(),
        "packages": package_versions(), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, labelling)
    for sub in (ORACLE_DIR, DATA_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out / sub)
    write_json_atomic(out / CLASSES, {
        "background": 0, "ignore": IGNORE_INDEX,
        "classes": [{"id": c.id, "name": c.name, "seen": c.seen} for c in vocab.classes]})


def _read_manifest(out) -> dict:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def record_labeller(config: RunConfig, training_record: dict | None) -> dict:
    """Before phase C labels shards with the checkpoint of ``training_record``: keep in the manifest's
    ``labels`` what labelled the dataset and whether its labels are zero-shot (``pipeline.dataset.zero_shot``);
    returns that entry. Runs under the output lock, after ``prepare_output``."""
    manifest = _read_manifest(config.out)
    has_shards = bool(finished_stats(config.out / DATA_DIR))
    entry = labels_entry(manifest.get(LABELS), training_record, has_shards)
    write_text_atomic(config.out / MANIFEST, json.dumps(manifest | {LABELS: entry}, indent=1, sort_keys=True))
    return entry
