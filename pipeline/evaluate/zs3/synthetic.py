"""Synthetic training data: datagen shards streamed through the public reader, class ids mapped to
the evaluation vocabulary by the class names each sample's ``json`` carries (never by position)."""

from __future__ import annotations

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset

from pipeline.dataset.labels import name_index
from pipeline.dataset.layout import CLASSES
from pipeline.dataset.location import shard_location
from pipeline.dataset.reader import first_sample, shard_urls, training_dataset
from pipeline.dataset.shards import read_json_object
from pipeline.evaluate.zs3.transforms import Transform
from stages.errors import DataError
from stages.metrics import IGNORE_INDEX
from stages.vocab import Vocabulary, normalize


def synthetic_urls(spec: str) -> list[str]:
    """``--synthetic`` as shard urls (``pipeline.dataset.reader.shard_urls``), its errors as one-line input errors."""
    try:
        return shard_urls(spec)
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"--synthetic: {err}") from err


def vocabulary_mask(mask: np.ndarray, meta: dict, names: dict[str, int]) -> np.ndarray:
    """A sample's (H, W) class-id mask in vocabulary ids, matched through the class names of its
    ``json``; labels of classes the vocabulary lacks, and any value the sample does not name, become 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[0] = 0
    for class_id, name in zip(meta["class_ids"], meta["classes"], strict=True):
        table[class_id] = names.get(normalize(name), IGNORE_INDEX)
    return table[mask]


def synthetic_stream(urls: list[str], vocabulary: Vocabulary, transform: Transform, seed: int,
                     buffer: int) -> IterableDataset:
    """Endless augmented (image, mask) tensors: ``pipeline.dataset.reader.training_dataset`` (split across
    processes and workers, ``buffer``-sample shuffle, a new shard order each pass) with ids mapped by name."""
    names = name_index(vocabulary)

    def pair(sample: tuple) -> tuple:
        image, mask, meta = sample
        return transform(image.permute(1, 2, 0).numpy(), vocabulary_mask(mask.numpy(), meta, names))

    return training_dataset(urls, shuffle=buffer, seed=seed, epochs=None).compose(wds.map(pair))


def check_synthetic(urls: list[str], vocabulary: Vocabulary, spec: str) -> dict:
    """Read the first sample through the training reader (which checks it and its dataset's classes.json):
    fail with one line on empty shards or classes the vocabulary does not know. Returns the first
    sample's metadata."""
    names = name_index(vocabulary)
    folder = shard_location(spec) if "{" not in spec else None  # a dataset folder, local or in a store
    classes_file = folder / CLASSES if folder is not None else None
    try:
        declared = [c["name"] for c in read_json_object(classes_file)["classes"]] \
            if classes_file is not None and classes_file.is_file() else []
    except (ValueError, TypeError, KeyError) as err:
        raise DataError(f"--synthetic {spec}: {classes_file} is damaged ({err}); rerun the run command to rewrite "
                        "it") from err
    first = first_sample(urls)  # checked as training reads it: a problem is one line naming shard and key
    if first is None:
        raise DataError(f"--synthetic {spec}: the shards hold no samples")
    unknown = sorted({n for n in [*declared, *first[2]["classes"]] if normalize(n) not in names})
    if unknown:
        raise DataError(f"--synthetic {spec}: classes {', '.join(unknown)} are not in vocabulary "
                            f"'{vocabulary.name}'")
    return first[2]
