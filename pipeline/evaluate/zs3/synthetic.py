"""Synthetic training data: datagen shards streamed through the public reader, class ids mapped to
the evaluation vocabulary by the class names each sample's ``json`` carries (never by position)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.autodecode import DecodingError

from pipeline.dataset.labels import name_index, normalize
from pipeline.dataset.reader import open_dataset, shard_urls, training_dataset
from pipeline.evaluate.zs3.transforms import Transform
from stages.errors import DataError
from stages.metrics import IGNORE_INDEX
from stages.vocab import Vocabulary


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


def unreadable_sample(err: Exception) -> bool:
    """webdataset error handler: a shard or sample that cannot be read stops training with one line
    naming the shard (and the sample key and member when the decoder got that far)."""
    if isinstance(err, DecodingError):
        cause = re.sub(r" <[^>]*>", "", str(err.__cause__))  # no "<_io.BytesIO object at 0x...>"
        raise DataError(f"--synthetic: shard {err.url}: sample {err.key} member {err.k} cannot be decoded: "
                            f"{cause}") from err
    url = err.args[-1] if len(err.args) > 1 else "?"  # webdataset appends the shard url to the arguments
    reason = next((str(a) for a in err.args[:-1] if isinstance(a, str)), "").split(" @ ")[0]
    raise DataError(f"--synthetic: shard {url} cannot be read: {type(err).__name__} {reason}".rstrip()) from err


def synthetic_stream(urls: list[str], vocabulary: Vocabulary, transform: Transform, seed: int,
                     buffer: int) -> IterableDataset:
    """Endless augmented (image, mask) tensors: ``pipeline.dataset.reader.training_dataset`` (split across
    processes and workers, ``buffer``-sample shuffle, a new shard order each pass) with ids mapped by name."""
    names = name_index(vocabulary)

    def pair(sample: tuple) -> tuple:
        image, mask, meta = sample
        return transform(image.permute(1, 2, 0).numpy(), vocabulary_mask(mask.numpy(), meta, names))

    return training_dataset(urls, shuffle=buffer, seed=seed, epochs=None,
                            handler=unreadable_sample).compose(wds.map(pair))


def check_synthetic(urls: list[str], vocabulary: Vocabulary, spec: str) -> dict:
    """Read the first sample (and classes.json of a local dataset): fail with one line on empty shards
    or classes the vocabulary does not know. Returns the first sample's metadata."""
    names = name_index(vocabulary)
    classes_file = Path(spec).expanduser() / "classes.json"
    declared = [c["name"] for c in json.loads(classes_file.read_text())["classes"]] if classes_file.is_file() else []
    try:
        first = next(iter(open_dataset(urls, nodesplitter=None, empty_check=False)), None)
    except DecodingError as err:
        unreadable_sample(err)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"--synthetic {spec}: cannot read shards: {err}") from err
    if first is None:
        raise DataError(f"--synthetic {spec}: the shards hold no samples")
    if "seg.png" not in first or "json" not in first:
        raise DataError(f"--synthetic {spec}: samples carry no seg.png/json (phase A oracle shards? "
                            "point at the dataset's data/ shards)")
    unknown = sorted({n for n in [*declared, *first["json"]["classes"]] if normalize(n) not in names})
    if unknown:
        raise DataError(f"--synthetic {spec}: classes {', '.join(unknown)} are not in vocabulary "
                            f"'{vocabulary.name}'")
    return first["json"]
