"""Reading datagen shards: webdataset pipelines for training, wids random access, safe decoders.

Decoding never runs code from the data: only the members datagen writes are decoded (images with
Pillow, ``seg.png`` as class ids, ``json``, ``npy`` without pickle); anything else, a ``.pyd`` or
``.pth`` member included, stays raw bytes. webdataset's and wids' default decoders would unpickle.

``training_dataset`` also refuses what is not the format, so a training job never learns from it:
each sample's members, key, image and mask are checked (``members``) against its json and the
dataset's ``classes.json``, and each shard's sample count against its stats; a problem stops the
job with one ``DataError`` line naming the shard and the key, unless the caller opts into skipping
(``SkipBadSamples``).
"""

from __future__ import annotations

import functools
import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand

from pipeline.dataset.atomic import write_json_atomic
from pipeline.dataset.layout import CLASSES, DATA_DIR, LEGACY_WIDS_INDEX, WIDS_INDEX
from pipeline.dataset.location import is_remote, listing, location, names, shard_location
from pipeline.dataset.members import (
    IMAGE_MEMBERS,
    RepeatedMember,
    check_mask,
    check_members,
    decode_json,
    decode_mask,
    decode_rgb,
    group_members,
    sample_classes,
)
from pipeline.dataset.shards import (
    finished_ids,
    finished_shards,
    read_json_object,
    read_stats,
    shard_path,
    stats_file,
)
from stages.errors import DataError


def image_member(sample: dict):
    """A sample's image member (raw bytes or decoded, as the sample holds it)."""
    return next(sample[ext] for ext in IMAGE_MEMBERS if ext in sample)


def decode_class_mask(data: bytes) -> np.ndarray:
    """``seg.png`` -> uint8 (H, W) class ids (webdataset's image decoders would make it RGB)."""
    return decode_mask(data)


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _handlers(image: str) -> list:
    return [wds.handle_extension("seg.png", decode_class_mask), wds.handle_extension("json", json.loads),
            wds.handle_extension("npy", decode_npy), wds.autodecode.ImageHandler(image)]


def safe_decoder(image: str = "rgb8") -> wds.autodecode.Decoder:
    """A webdataset Decoder for datagen samples with no default (pickle-capable) handlers."""
    return wds.autodecode.Decoder(_handlers(image), pre=[], post=[])


def shard_urls(source) -> list[str]:
    """Shards to read, as a list: an output folder or shard folder -> its finished shards; a ``.txt``
    file -> the shards it lists, one a line; a brace pattern (``shard-{000000..000099}.tar``) -> its
    expansion; a shard path, URL or ``pipe:`` command -> itself; a list -> each item expanded so.
    Folders and ``.txt`` files may be object-store URLs (``s3://bucket/prefix``: read through fsspec).
    A local path that does not exist raises FileNotFoundError, nothing to read ValueError."""
    if isinstance(source, (list, tuple)):
        return [url for item in source for url in shard_urls(item)]
    text = str(source)
    if "{" in text or text.startswith("pipe:") or (path := shard_location(text)) is None:
        urls = list(braceexpand(text))
        if not urls:
            raise ValueError(f"{source} lists no shards")
        return urls
    if path.suffix != ".tar" and path.is_dir():
        folder = path / DATA_DIR if DATA_DIR in names(path) else path
        shards = [str(p) for p in finished_shards(folder)]
        if not shards:
            raise FileNotFoundError(f"{folder} holds no finished shards (shard-*.tar with stats)")
        return shards
    if path.suffix == ".txt" and path.is_file():
        urls = [url for line in path.read_text().splitlines() if line.strip() for url in braceexpand(line.strip())]
    elif path.is_file():
        urls = [text]
    else:
        raise FileNotFoundError(f"{source}: no such folder, shard or shard list")
    if not urls:
        raise ValueError(f"{source} lists no shards")
    return urls


def open_dataset(urls, image: str = "rgb8", **webdataset_kwargs) -> wds.WebDataset:
    """A ``webdataset.WebDataset`` over datagen shards (an output folder, paths, brace patterns or
    URLs), decoding images with ``image`` (a webdataset image spec), masks as class ids, json as dicts."""
    webdataset_kwargs.setdefault("shardshuffle", False)
    return wds.WebDataset(shard_urls(urls), **webdataset_kwargs).decode(*_handlers(image), pre=[], post=[])


def to_training_tuple(sample: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Decoded sample -> (uint8 image (3, H, W), int64 class ids (H, W): 0 background, 255 ignore, meta)."""
    image = image_member(sample)
    meta = dict(sample["json"], key=sample["__key__"])
    return (torch.from_numpy(np.array(image)).permute(2, 0, 1),
            torch.from_numpy(sample["seg.png"].astype(np.int64)), meta)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor, dict]]) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """A DataLoader ``collate_fn`` for ``training_dataset``: images stacked to uint8 (B, 3, H, W), masks
    to int64 (B, H, W), metas kept as a list of B dicts. PyTorch's default collation would merge the
    metas key by key, and fails on their lists (instances, classes), whose lengths differ by sample."""
    images, masks, metas = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(masks), list(metas)


class _ShardPasses(torch.utils.data.IterableDataset):
    """The shard urls, one pass per iteration; with a seed, pass k is shuffled with ``seed + k`` (the
    same order on every node and DataLoader worker, a new order each pass)."""

    def __init__(self, urls: list[str], seed: int | None):
        super().__init__()
        self.urls, self.seed, self.passes = urls, seed, 0

    def __iter__(self):
        urls = list(self.urls)
        if self.seed is not None:
            random.Random(self.seed + self.passes).shuffle(urls)
        self.passes += 1
        return iter([{"url": url, "pass": self.passes} for url in urls])


class SkipBadSamples:
    """An explicit opt-in ``handler`` for ``training_dataset``: a sample that is not the format (or the
    rest of a shard that cannot be read) is skipped and counted instead of stopping the job. Only
    ``DataError`` is skipped; anything else still stops. Counts are per process: read them where the
    dataset is iterated (a DataLoader with workers iterates copies in its worker processes)."""

    def __init__(self):
        self.skipped = 0
        self.reasons: list[str] = []  # the first 100 messages, each naming shard and key

    def __call__(self, err: Exception) -> bool:
        if not isinstance(err, DataError):
            raise err
        self.skipped += 1
        if len(self.reasons) < 100:
            self.reasons.append(str(err))
        return True


def _stop(err: Exception) -> bool:
    raise err


class _CheckedShards:
    """Pipeline stage: the samples of each shard, refused (``DataError`` to ``handler``) when a shard
    cannot be read, a key is not a sample index (a member named as a path: ``../``, absolute) or repeats
    within a pass, members are not the format's (a pickle member among them), or the shard holds fewer
    or more samples than its stats say (none at all when it has no stats)."""

    def __init__(self, handler):
        self.handler, self.stopped = handler, False

    def __call__(self, sources):
        keys, current, self.stopped = set(), None, False
        for source in sources:
            if source.get("pass") != current:
                keys, current = set(), source.get("pass")
            yield from self._shard(source["url"], keys)
            if self.stopped:
                return

    def _refused(self, err: DataError) -> bool:
        """True to go on (the handler skipped it); False when the handler asks to stop reading."""
        self.stopped = not self.handler(err)
        return not self.stopped

    def _shard(self, url: str, keys: set[str]):
        count = 0
        try:
            for sample in _tar_samples(url):
                try:
                    _check_key(sample, keys)
                except DataError as err:
                    if self._refused(DataError(f"shard {url} key {sample['__key__']}: {err}")):
                        continue
                    return
                count += 1
                yield sample
        except RepeatedMember as err:
            self._refused(DataError(f"shard {url} cannot be read ({err})"))
            return
        except DataError:  # the handler's refusal: stop as it asked
            raise
        except (OSError, ValueError, EOFError, tarfile.TarError) as err:
            reason = str(err.args[0] if err.args else err).split(" @ ")[0] or type(err).__name__
            self._refused(DataError(f"shard {url} cannot be read ({reason})"))
            return
        written = _stats_written(url)
        if written is None and count == 0:
            self._refused(DataError(f"shard {url} holds no samples (an empty or zero-byte file?)"))
        elif written is not None and count != written:
            self._refused(DataError(f"shard {url} holds {count} samples, its stats say {written}: truncated or "
                                    "damaged; run `datagen validate`"))


def _tar_samples(url: str):
    """A shard's samples as raw members, grouped as `datagen validate` groups them (``group_members``)."""
    for source in wds.tariterators.url_opener([{"url": url}], handler=_stop):
        try:
            files = wds.tariterators.tar_file_iterator(source["stream"], handler=_stop)
            for sample in group_members((f["fname"], f["data"]) for f in files):
                yield dict(sample, __url__=url)
        finally:
            source["stream"].close()


def _check_key(sample: dict, keys: set[str]) -> None:
    """The sample's members are the format's (``check_members``) and its key is new in this pass."""
    key = sample["__key__"]
    check_members(key, {k for k in sample if not k.startswith("__")})
    if key in keys:
        raise DataError("the key appears twice (in this shard or an earlier one)")
    keys.add(key)


def _stats_written(url: str) -> int | None:
    """The sample count a shard's stats give (a local or object-store shard), None when it has none (or
    they do not count)."""
    shard = shard_location(url)
    stats = read_stats(shard.parent, _shard_id(url)) if shard is not None and _shard_id(url) is not None else None
    written = stats.get("written") if stats else None
    return written if type(written) is int else None


def _shard_id(url: str) -> int | None:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    digits = name.removeprefix("shard-").removesuffix(".tar")
    return int(digits) if name.startswith("shard-") and name.endswith(".tar") and digits.isdigit() else None


class _DatasetClasses:
    """``classes.json`` (id -> name) of the dataset a shard belongs to (beside its folder, or in it; local
    or in an object store), read once per folder; None for shards elsewhere (``pipe:``, http), whose
    samples are checked against their own json alone."""

    def __init__(self):
        self.found: dict[str, dict[int, str] | None] = {}

    def __call__(self, url: str) -> dict[int, str] | None:
        shard = shard_location(url)
        if shard is None:
            return None
        folder = shard.parent
        if str(folder) not in self.found:
            path = next((p for p in (folder.parent / CLASSES, folder / CLASSES) if p.is_file()), None)
            self.found[str(folder)] = None if path is None else _class_names(path)
        return self.found[str(folder)]


def _class_names(path: Path) -> dict[int, str]:
    try:
        entries = read_json_object(path).get("classes")
        return {c["id"]: c["name"] for c in entries}
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise DataError(f"{path} is damaged ({err if isinstance(err, ValueError) else 'not a classes list'}); "
                        "rerun the run command to rewrite it") from err


def checked_training_tuple(sample: dict, classes: _DatasetClasses) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A raw sample decoded and checked -> ``to_training_tuple``'s (image, mask, meta); DataError naming
    the shard and key when the json, image or mask is not the format."""
    try:
        meta = decode_json(sample["json"])
        class_ids = sample_classes(meta, classes(sample["__url__"]))
        image = decode_rgb(image_member(sample), "the image")
        mask = decode_mask(sample["seg.png"])
        check_mask(mask, image.shape, class_ids, f"the sample's classes {sorted(class_ids)}")
    except DataError as err:
        raise DataError(f"shard {sample['__url__']} key {sample['__key__']}: {err}") from err
    return to_training_tuple({"__key__": sample["__key__"], "jpg": image, "seg.png": mask, "json": meta})


class _TrainingPipeline(wds.DataPipeline):
    """A DataPipeline whose passes over the shards are counted from 0 at every new iteration, so an
    epoch's shard order depends only on the seed and the epoch number."""

    def iterator(self):
        self.pipeline[0].passes = 0
        return super().iterator()


def training_dataset(source, *, shuffle: int = 0, seed: int = 0, epochs: int | None = 1,
                     handler=_stop) -> wds.DataPipeline:
    """An IterableDataset of (image, mask, meta) tuples for a training loop (see ``to_training_tuple``).

    Shards are split first across nodes (torch.distributed rank, or RANK and WORLD_SIZE) and then
    across DataLoader workers, so each sample is read once per epoch by the whole job; give it at
    least nodes x workers shards. ``shuffle`` > 0 shuffles the shard order (seeded, the same on every
    node, a new order each epoch) and samples within a buffer of that size. ``epochs`` passes over the
    shards (None: endless); iteration stops early if a pass yields nothing to this node or worker.

    Every sample is checked before it is yielded (``_CheckedShards``, ``checked_training_tuple``): its
    members, key, json, image, and a mask of one 8-bit channel, the image's size, with only 0, 255 and
    the classes its json names, which must be those of the dataset's ``classes.json``; keys repeated
    within what one process reads are refused, so is a shard holding other than its stats' count.
    ``handler`` gets each problem as a ``DataError`` naming the shard and key (webdataset's handler
    protocol: return True to skip, raise to stop); by default it is raised. ``SkipBadSamples()`` is
    the opt-in to skip and count instead.
    """
    classes = _DatasetClasses()
    stages = [_ShardPasses(shard_urls(source), seed if shuffle else None),
              wds.split_by_node, wds.split_by_worker, _CheckedShards(handler)]
    if shuffle:
        stages.append(wds.shuffle(shuffle, initial=min(shuffle, 100), rng=random.Random(seed)))
    stages.append(wds.map(functools.partial(checked_training_tuple, classes=classes), handler=handler))
    pipeline = _TrainingPipeline(*stages)
    return pipeline if epochs == 1 else pipeline.repeat(nepochs=epochs or -1)


def first_sample(source) -> tuple[torch.Tensor, torch.Tensor, dict] | None:
    """The first sample ``training_dataset`` would yield, checked the same way, read here whatever the
    node or worker (a quick check of the data before a job starts); None when the shards hold none."""
    samples = _CheckedShards(_stop)({"url": url} for url in shard_urls(source))
    return next((checked_training_tuple(s, _DatasetClasses()) for s in samples), None)


def write_wids_index(folder: Path) -> Path:
    """Write the wids shard index of a folder's finished shards (urls relative to the index)."""
    entries = listing(folder)  # one listing gives the shards and their sizes
    shards = []
    for shard_id in finished_ids(set(entries)):
        stats = read_json_object(stats_file(folder, shard_id, set(entries)))
        name = shard_path(folder, shard_id).name
        shards.append({"url": name, "nsamples": stats["written"], "filesize": entries[name].size})
    index = folder / WIDS_INDEX
    name = folder.parent.name if is_remote(folder) else folder.resolve().parent.name
    write_json_atomic(index, {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
                              "shardlist": shards})
    return index


def _wids_decode(sample: dict, image: str = "rgb8") -> dict:
    """wids gives '.ext' -> stream; decode like open_dataset, with keys without the leading dot."""
    raw = {k.lstrip("."): (v if k.startswith("__") or isinstance(v, bytes) else v.read())
           for k, v in sample.items()}
    return safe_decoder(image)(raw)


def wids_dataset(source, image: str = "rgb8"):
    """A ``wids.ShardListDataset`` (random access, ``len``) over an output folder, shard folder or
    index file; samples decode like ``open_dataset``'s. Local shards are read in place; for shards in an
    object store, use ``open_dataset`` or ``training_dataset`` (wids would download each shard first)."""
    import wids

    index = location(source)
    if is_remote(index):
        raise DataError(f"{source}: wids random access reads local shards; stream these with open_dataset or "
                        "training_dataset, or copy them to a local folder")
    if index.is_dir():
        index = index / DATA_DIR if (index / DATA_DIR).is_dir() else index
        index = index / WIDS_INDEX if (index / WIDS_INDEX).exists() or not (index / LEGACY_WIDS_INDEX).exists() \
            else index / LEGACY_WIDS_INDEX  # a dataset written before the index was hidden
    return wids.ShardListDataset(str(index), localname=lambda url: url,
                                 transformations=[lambda s: _wids_decode(s, image)])
