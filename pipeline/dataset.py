"""The output folder: manifest, classes file, summary and dataset card."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from pipeline.config import ConfigError, RunConfig
from pipeline.shards import finished_stats, remove_stale_temporaries, write_json_atomic, write_text_atomic

FORMAT_VERSION = 1
ORACLE_DIR, DATA_DIR = "oracle", "data"
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
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{manifest_path} is not valid JSON: {err}") from err
        if old.get("fingerprint") != config.fingerprint():
            raise ConfigError(
                f"{out} holds a dataset made with another config (fingerprint {old.get('fingerprint')}, "
                f"this run {config.fingerprint()}); choose another --out or delete that folder")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists, is not empty and is not a datagen dataset; choose another --out")
    written_to = max((s["end"] for s in finished_stats(out / DATA_DIR)), default=0) if labelling else 0
    if written_to > config.n:
        raise ConfigError(f"{out} already holds samples 0..{written_to - 1}, more than --n {config.n}; "
                          f"pass --n {written_to} or more, or choose another --out")


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
    path = config.out / "manifest.json"
    text = json.dumps(manifest, indent=1, sort_keys=True)
    if not path.exists():
        tmp = Path(f"{path}.tmp{os.getpid()}")
        tmp.write_text(text)
        try:
            os.link(tmp, path)  # atomic, and fails if another run created the manifest meanwhile
            return
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    check_output(config, labelling)  # a manifest is there: only the config that owns it goes on
    write_text_atomic(path, text)


def prepare_output(config: RunConfig, sd_source: str, oracle_source: str, labelling: bool) -> None:
    """Create or reopen the output folder and (re)write its manifest and classes file."""
    out = config.out
    check_output(config, labelling)
    out.mkdir(parents=True, exist_ok=True)
    vocab = config.vocabulary()
    claim_output(config, {
        "format_version": FORMAT_VERSION, "fingerprint": config.fingerprint(),
        "config": config.model_dump(mode="json"), "vocabulary": vocab.to_dict(),
        "models": {"stable_diffusion": sd_source, "oracle": oracle_source},
        "packages": package_versions(), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, labelling)
    for sub in (ORACLE_DIR, DATA_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out / sub)
    write_json_atomic(out / "classes.json", {
        "background": 0, "ignore": 255,
        "classes": [{"id": c.id, "name": c.name, "seen": c.seen} for c in vocab.classes]})


def summarize(folder: Path) -> dict:
    """Totals over every finished shard's stats in a folder."""
    written, planned, failed, instances = 0, 0, Counter(), Counter()
    shards = finished_stats(folder)
    for stats in shards:
        written += stats["written"]
        planned += stats["planned"]
        failed.update(stats["failed"])
        instances.update(stats["class_instances"])
    return {"shards": len(shards), "planned": planned, "written": written, "failed": dict(failed),
            "class_instances": dict(sorted(instances.items()))}


def write_card(config: RunConfig, summary: dict) -> None:
    """A short README.md in the output folder: what made the data and how to read it."""
    vocab = config.vocabulary()
    rows = "\n".join(f"| {c.id} | {c.name} | {'seen' if c.seen else 'unseen'} | "
                     f"{summary['class_instances'].get(c.name, 0)} |" for c in vocab.classes)
    failed = ", ".join(f"{k}: {v}" for k, v in sorted(summary["failed"].items())) or "none"
    write_text_atomic(config.out / "README.md", f"""# datagen dataset

Synthetic semantic segmentation data (Grounded Diffusion): Stable Diffusion images labelled by a
grounding module trained on Mask R-CNN oracle masks of the seen classes. Made by datagen
{package_versions()['datagen']} with model preset `{config.preset_name}`, vocabulary `{vocab.name}`,
seed {config.seed}; the full config, model sources and package versions are in `manifest.json`.

- samples: {summary['written']} written of {summary['planned']} planned, in {summary['shards']} shards
  under `{DATA_DIR}/`; failed: {failed}
- per sample: `jpg`/`png` image, `seg.png` (uint8 class ids, 0 background, 255 ignore), `json`
  (prompt, classes, seed, instances as COCO RLE)

```python
from pipeline.reader import open_dataset  # or plain webdataset, see the datagen README
for sample in open_dataset("{DATA_DIR}/shard-{{000000..{max(summary['shards'] - 1, 0):06d}}}.tar"):
    image, classes = sample["jpg"], sample["seg.png"]  # (H, W, 3) uint8, (H, W) uint8 class ids
```

| id | class | split | instances |
|---:|---|---|---:|
{rows}
""")
