"""Reading datagen shards: webdataset pipelines for training, wids random access, safe decoders.

Decoding never runs code from the data: only the members datagen writes are decoded (images with
Pillow, ``seg.png`` as class ids, ``json``, ``npy`` without pickle); anything else, a ``.pyd`` or
``.pth`` member included, stays raw bytes. webdataset's and wids' default decoders would unpickle.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image

from pipeline.dataset.atomic import write_json_atomic
from pipeline.dataset.layout import DATA_DIR, WIDS_INDEX
from pipeline.dataset.shards import finished_shards, read_stats

IMAGE_MEMBERS = ("jpg", "png")  # a sample's image is one of these (the run's image_format)


def image_member(sample: dict):
    """A sample's image member (raw bytes or decoded, as the sample holds it)."""
    return next(sample[ext] for ext in IMAGE_MEMBERS if ext in sample)


def decode_class_mask(data: bytes) -> np.ndarray:
    """``seg.png`` -> uint8 (H, W) class ids (webdataset's image decoders would make it RGB)."""
    return np.array(Image.open(io.BytesIO(data)))


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
    A local path that does not exist raises FileNotFoundError, nothing to read ValueError."""
    if isinstance(source, (list, tuple)):
        return [url for item in source for url in shard_urls(item)]
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path / DATA_DIR if (path / DATA_DIR).is_dir() else path
        shards = [str(p) for p in finished_shards(folder)]
        if not shards:
            raise FileNotFoundError(f"{folder} holds no finished shards (shard-*.tar with stats)")
        return shards
    if path.suffix == ".txt" and path.is_file():
        urls = [url for line in path.read_text().splitlines() if line.strip() for url in braceexpand(line.strip())]
    elif _is_remote(str(source)) or "{" in str(source) or path.is_file():
        urls = list(braceexpand(str(source)))
    else:
        raise FileNotFoundError(f"{source}: no such folder, shard or shard list")
    if not urls:
        raise ValueError(f"{source} lists no shards")
    return urls


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


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
        return iter([{"url": url} for url in urls])


class _TrainingPipeline(wds.DataPipeline):
    """A DataPipeline whose passes over the shards are counted from 0 at every new iteration, so an
    epoch's shard order depends only on the seed and the epoch number."""

    def iterator(self):
        self.pipeline[0].passes = 0
        return super().iterator()


def training_dataset(source, *, shuffle: int = 0, seed: int = 0, epochs: int | None = 1,
                     handler=wds.reraise_exception) -> wds.DataPipeline:
    """An IterableDataset of (image, mask, meta) tuples for a training loop (see ``to_training_tuple``).

    Shards are split first across nodes (torch.distributed rank, or RANK and WORLD_SIZE) and then
    across DataLoader workers, so each sample is read once per epoch by the whole job; give it at
    least nodes x workers shards. ``shuffle`` > 0 shuffles the shard order (seeded, the same on every
    node, a new order each epoch) and samples within a buffer of that size. ``epochs`` passes over the
    shards (None: endless); iteration stops early if a pass yields nothing to this node or worker.
    ``handler`` gets every exception of reading, decoding and converting (webdataset's handler
    protocol: return True to skip the sample, raise to stop); by default the exception is re-raised.
    """
    stages = [_ShardPasses(shard_urls(source), seed if shuffle else None),
              wds.split_by_node, wds.split_by_worker, wds.tarfile_to_samples(handler=handler)]
    if shuffle:
        stages.append(wds.shuffle(shuffle, initial=min(shuffle, 100), rng=random.Random(seed)))
    stages += [wds.decode(*_handlers("rgb8"), pre=[], post=[], handler=handler),
               wds.map(to_training_tuple, handler=handler)]
    pipeline = _TrainingPipeline(*stages)
    return pipeline if epochs == 1 else pipeline.repeat(nepochs=epochs or -1)


def write_wids_index(folder: Path) -> Path:
    """Write the wids shard index of a folder's finished shards (urls relative to the index)."""
    shards = []
    for path in finished_shards(folder):
        stats = read_stats(folder, int(path.stem.removeprefix("shard-")))
        shards.append({"url": path.name, "nsamples": stats["written"], "filesize": path.stat().st_size})
    index = Path(folder) / WIDS_INDEX
    write_json_atomic(index, {"__kind__": "wids-shard-index-v1", "wids_version": 1,
                              "name": Path(folder).resolve().parent.name, "shardlist": shards})
    return index


def _wids_decode(sample: dict, image: str = "rgb8") -> dict:
    """wids gives '.ext' -> stream; decode like open_dataset, with keys without the leading dot."""
    raw = {k.lstrip("."): (v if k.startswith("__") or isinstance(v, bytes) else v.read())
           for k, v in sample.items()}
    return safe_decoder(image)(raw)


def wids_dataset(source, image: str = "rgb8"):
    """A ``wids.ShardListDataset`` (random access, ``len``) over an output folder, shard folder or
    index file; samples decode like ``open_dataset``'s. Local shards are read in place."""
    import wids

    index = Path(source)
    if index.is_dir():
        index = index / DATA_DIR / WIDS_INDEX if (index / DATA_DIR).is_dir() else index / WIDS_INDEX
    return wids.ShardListDataset(str(index), localname=lambda url: url,
                                 transformations=[lambda s: _wids_decode(s, image)])
