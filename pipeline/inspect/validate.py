"""`datagen validate`: every shard checked against the format, its stats and the manifest.

Problems are collected (shard, key, what is wrong) rather than raised, so one run reports them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from rich.progress import Progress

from pipeline.dataset.layout import Phase
from pipeline.dataset.location import location
from pipeline.dataset.manifest import SHARDS
from pipeline.dataset.members import check_members, decode_image, decode_json, decode_mask
from pipeline.dataset.plan import plan_shards
from pipeline.dataset.shards import finished_shards, shard_id, whole_stats
from pipeline.dataset.tally import MASK_COUNTS, Tally
from pipeline.inspect.folder import CorruptShard, DatasetFolder, open_output, read_shard
from stages.errors import DataError
from stages.metrics import IGNORE_INDEX


@dataclass(frozen=True)
class Problem:
    shard: str  # e.g. data/shard-000001.tar, or manifest.json
    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.shard}{f' key {self.key}' if self.key else ''}: {self.message}"


def validate_output(out: Path, progress: Progress | None = None) -> tuple[list[Problem], dict]:
    """All problems in a dataset folder (data/ and, when present, oracle/) and what was checked; ``progress``
    gets a bar per folder, counting samples."""
    data = open_output(out, Phase.LABEL)
    problems = _check_manifest(data)
    checked = {Phase.LABEL: _check_folder(data, problems, progress)}
    if finished_shards(location(out) / Phase.ORACLE.folder):
        checked[Phase.ORACLE] = _check_folder(open_output(out, Phase.ORACLE), problems, progress)
    return problems, checked


def _check_manifest(ds: DatasetFolder) -> list[Problem]:
    vocab = [{"id": c["id"], "name": c["name"], "seen": c["seen"]} for c in ds.manifest["vocabulary"]["classes"]]
    if vocab != ds.classes:
        return [Problem("classes.json", None, "classes disagree with the manifest's vocabulary")]
    return []


def _check_folder(ds: DatasetFolder, problems: list[Problem], progress: Progress | None) -> dict:
    """Check every planned shard of one folder; returns counts of what was read."""
    found = {shard_id(p): p for p in ds.shards}
    stats_of = {sid: ds.stats(shard) for sid, shard in found.items()}  # one read of each
    total = sum(stats["written"] for stats in stats_of.values() if whole_stats(stats))
    bar = progress.add_task(f"validate {ds.folder.name}/", total=total or None) if progress else None
    advance = (lambda k: progress.advance(bar, k)) if progress else (lambda k: None)
    config = ds.manifest.get("config", {})
    n = config.get("n") if ds.phase is Phase.LABEL else config.get("preset", {}).get("bootstrap_n")
    size = config.get("preset", {}).get("shard_size")
    planned = {t.shard_id: t for t in plan_shards(ds.phase, n, size, ds.folder)} if n and size else {}
    for sid in sorted(set(planned) - set(found)):
        problems.append(Problem(f"{ds.folder.name}/shard-{sid:06d}.tar", None,
                                "planned shard is missing or unfinished: rerun the run command to finish it"))
    samples = 0
    for sid, shard in found.items():
        stats, where = stats_of[sid], f"{ds.folder.name}/{shard.name}"
        if not whole_stats(stats):
            problems.append(Problem(where, None, "its stats are damaged (counts missing or not integers): the shard "
                                    "counts as unfinished; rerun the run command to redo it"))
            samples += _check_shard(ds, shard, None, where, problems, advance)
            continue
        task = planned.get(sid)
        if task is None or (stats.get("start"), stats.get("end")) != (task.start, task.end):
            problems.append(Problem(where, None, f"holds samples {stats.get('start')}..{stats.get('end')}, "
                                    "not what the manifest's config plans for it"))
        if stats.get("fingerprint") != ds.manifest.get("fingerprint"):
            problems.append(Problem(where, None, "stats were written by another config than the manifest's"))
        samples += _check_shard(ds, shard, stats, where, problems, advance)
    return {"shards": len(found), "samples": samples}


def _check_shard(ds: DatasetFolder, shard: Path, stats: dict | None, where: str, problems: list[Problem],
                 advance: Callable[[int], None]) -> int:
    """Every sample of one shard against the format, and (unless ``stats`` is None: damaged) its stats
    and the sha256 recorded when it was written."""
    keys, instances, pixels = [], Counter(), Counter()
    tally, digest = Tally(masks=ds.phase is Phase.LABEL), hashlib.sha256()
    try:
        for sample in read_shard(shard, digest):
            key = sample["__key__"]
            keys.append(key)
            for message in _check_sample(ds, sample, stats):
                problems.append(Problem(where, key, message))
            for inst in _instances(sample):
                instances[inst.get("name")] += 1
                pixels[inst.get("name")] += inst.get("area", 0)
            with contextlib.suppress(DataError, KeyError):  # _check_sample reported it
                tally.add_sample(sample, ds.image)
            advance(1)
    except CorruptShard as err:
        problems.append(Problem(where, err.key, f"truncated or corrupt tar at this key: {err.problem}"))
        return len(keys)
    in_manifest = ds.manifest.get(SHARDS) if isinstance(ds.manifest.get(SHARDS), dict) else {}
    recorded = {"its stats": (stats or {}).get("sha256"), "the manifest": in_manifest.get(where)}
    for source, expected in recorded.items():  # none where written before datagen recorded digests
        if isinstance(expected, str) and expected != digest.hexdigest():
            problems.append(Problem(where, None, f"sha256 {digest.hexdigest()[:16]}... is not the {expected[:16]}... "
                                    f"{source} recorded when it was written: changed or damaged since"))
    if stats is None:
        return len(keys)
    if len(keys) != stats.get("written"):
        problems.append(Problem(where, keys[-1] if keys else None,
                                f"holds {len(keys)} samples, its stats say {stats.get('written')}"))
    failed_keys = {f.get("key") for f in stats.get("failures", []) if isinstance(f, dict)}
    if len(set(keys)) != len(keys) or set(keys) & failed_keys:
        problems.append(Problem(where, None, "a key appears twice, or both written and failed"))
    if dict(instances) != stats.get("class_instances", {}) or dict(pixels) != stats.get("class_pixels", {}):
        problems.append(Problem(where, None, "per-class instance counts or pixel areas disagree with its stats"))
    counted = tally.counts()
    if wrong := [k for k in MASK_COUNTS if k in stats and stats[k] != counted.get(k)]:
        problems.append(Problem(where, None, f"its stats' {', '.join(wrong)} disagree with its samples"))
    return len(keys)


def _instances(sample: dict) -> list[dict]:
    """The sample's well-formed instances (for the per-class tallies; _check_sample reports the rest)."""
    try:
        instances = decode_json(sample["json"]).get("instances", [])
    except (KeyError, DataError):
        return []
    return [i for i in instances if isinstance(i, dict) and i.get("name") is not None] \
        if isinstance(instances, list) else []


def _check_sample(ds: DatasetFolder, sample: dict, stats: dict | None) -> list[str]:
    key = sample["__key__"]
    try:  # the training reader's check (``members.check_members``): what one refuses, so does the other
        check_members(key, set(sample) - {"__key__"}, ds.members)
    except DataError as err:
        return [str(err)]
    if stats is not None and not stats.get("start", 0) <= int(key) < stats.get("end", 0):
        return [f"key is not a sample index in the shard's range {(stats or {}).get('start')}.."
                f"{(stats or {}).get('end')}"]
    try:
        meta = decode_json(sample["json"])
        image = decode_image(sample[ds.image], "image")
    except DataError as err:
        return [str(err)]
    class_ids = meta.get("class_ids", [])
    if not isinstance(class_ids, list) or not all(isinstance(i, int) for i in class_ids):
        return ["json's class_ids is not a list of class ids"]
    if not isinstance(meta.get("instances", []), list) or not all(isinstance(i, dict) for i in meta["instances"]):
        return ["json's instances is not a list of objects"]
    h, w = image.shape[:2]
    problems = []
    if image.ndim != 3 or image.shape[2] != 3:
        problems.append(f"image has shape {image.shape}, not (H, W, 3)")
    if (meta.get("height"), meta.get("width")) != (h, w) or meta.get("index") != int(key):
        problems.append("json's height, width or index disagree with the image and key")
    names = ds.names
    if bad := [i for i in meta.get("class_ids", []) if i not in names]:
        problems.append(f"class ids {bad} are not in the vocabulary")
    seg = None
    if ds.phase is Phase.LABEL:
        try:
            seg = decode_mask(sample["seg.png"])
        except DataError as err:
            return [*problems, str(err)]
        if seg.shape != (h, w):
            return [*problems, f"mask is {seg.shape[1]}x{seg.shape[0]} (or not one channel), image {w}x{h}"]
        if bad := sorted(set(np.unique(seg).tolist()) - {0, IGNORE_INDEX, *meta.get("class_ids", [])}):
            problems.append(f"mask holds class ids {bad}, not among the sample's classes or 0/255")
    else:
        try:
            latent = np.load(io.BytesIO(sample["latent.npy"]), allow_pickle=False)
            if latent.dtype != np.float32 or latent.ndim != 3:
                problems.append(f"latent.npy is {latent.dtype} {latent.shape}, not float32 (C, h, w)")
        except ValueError as err:
            problems.append(f"latent.npy does not load without pickle ({err})")
    for inst in meta.get("instances", []):
        problems += _check_instance(inst, names, (h, w), seg)
    return problems


def _check_instance(inst: dict, names: dict[int, str], shape: tuple[int, int], seg: np.ndarray | None) -> list[str]:
    cid = inst.get("class_id")
    if cid is None or inst.get("name") is None:
        return ["an instance has no class_id or name"]
    if not isinstance(cid, int) or names.get(cid) != inst.get("name"):
        return [f"instance class {cid} '{inst.get('name')}' is not in the vocabulary"]
    try:
        rle = dict(inst["segmentation"], counts=inst["segmentation"]["counts"].encode())
        decoded = mask_utils.decode(rle).astype(bool)
    except Exception as err:  # noqa: BLE001 - pycocotools raises bare TypeErrors/ValueErrors for bad RLE
        return [f"instance {names[cid]}: RLE does not decode ({type(err).__name__}: {err})"]
    if decoded.shape != shape or int(decoded.sum()) != inst.get("area"):
        return [f"instance {names[cid]}: RLE is {decoded.shape} with area {int(decoded.sum())}, "
                f"json says image {shape}, area {inst.get('area')}"]
    if seg is not None and not np.array_equal(decoded, seg == cid):
        return [f"instance {names[cid]}: RLE disagrees with seg.png's pixels of class {cid}"]
    return []
