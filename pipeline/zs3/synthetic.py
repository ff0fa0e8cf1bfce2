"""Synthetic training data: datagen shards streamed through the public reader, class ids mapped to
the evaluation vocabulary by the class names each sample's ``json`` carries (never by position)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset

from pipeline.reader import open_dataset, shard_urls
from pipeline.zs3.config import Zs3InputError
from pipeline.zs3.labels import name_index, normalize
from pipeline.zs3.transforms import Transform
from stages.metrics import IGNORE_INDEX
from stages.vocab import Vocabulary


def synthetic_urls(spec: str) -> list[str]:
    """``--synthetic`` as shard urls (``pipeline.reader.shard_urls``), its errors as one-line input errors."""
    try:
        return shard_urls(spec)
    except (FileNotFoundError, ValueError) as err:
        raise Zs3InputError(f"--synthetic: {err}") from err


def open_shards(urls: list[str], seed: int) -> wds.WebDataset:
    """The one place the public reader is opened: shards shuffled by ``seed``, split across processes."""
    return open_dataset(urls, shardshuffle=len(urls), seed=seed, nodesplitter=wds.split_by_node, empty_check=False)


def sample_arrays(sample: dict, names: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) mask in vocabulary ids; labels of classes the vocabulary
    lacks, and any value the sample does not name, become 255."""
    image = sample["jpg"] if "jpg" in sample else sample["png"]
    meta = sample["json"]
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[0] = 0
    for class_id, name in zip(meta["class_ids"], meta["classes"], strict=True):
        table[class_id] = names.get(normalize(name), IGNORE_INDEX)
    return image, table[sample["seg.png"]]


def check_synthetic(urls: list[str], vocabulary: Vocabulary, spec: str) -> dict:
    """Read the first sample (and classes.json of a local dataset): fail with one line on empty shards
    or classes the vocabulary does not know. Returns the first sample's metadata."""
    names = name_index(vocabulary)
    classes_file = Path(spec).expanduser() / "classes.json"
    declared = [c["name"] for c in json.loads(classes_file.read_text())["classes"]] if classes_file.is_file() else []
    try:
        first = next(iter(open_dataset(urls, nodesplitter=None, empty_check=False)), None)
    except (OSError, ValueError, KeyError) as err:
        raise Zs3InputError(f"--synthetic {spec}: cannot read shards: {err}") from err
    if first is None:
        raise Zs3InputError(f"--synthetic {spec}: the shards hold no samples")
    if "seg.png" not in first or "json" not in first:
        raise Zs3InputError(f"--synthetic {spec}: samples carry no seg.png/json (phase A oracle shards? "
                            "point at the dataset's data/ shards)")
    unknown = sorted({n for n in [*declared, *first["json"]["classes"]] if normalize(n) not in names})
    if unknown:
        raise Zs3InputError(f"--synthetic {spec}: classes {', '.join(unknown)} are not in vocabulary "
                            f"'{vocabulary.name}'")
    return first["json"]


class SyntheticStream(IterableDataset):
    """Endless augmented (image, mask) tensors from the shards, one reshuffled pass after another;
    ends only if a pass yields nothing (a process or worker that got no shard)."""

    def __init__(self, urls: list[str], vocabulary: Vocabulary, transform: Transform, seed: int, buffer: int):
        self.urls, self.names, self.transform = urls, name_index(vocabulary), transform
        self.seed, self.buffer = seed, buffer

    def __iter__(self):
        epoch = 0
        while True:
            samples = open_shards(self.urls, self.seed + epoch)
            if self.buffer:
                samples = samples.shuffle(self.buffer, seed=self.seed + epoch)
            count = 0
            for sample in samples:
                count += 1
                yield self.transform(*sample_arrays(sample, self.names))
            if not count:
                return
            epoch += 1
