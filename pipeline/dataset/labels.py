"""Class names of a dataset -> vocabulary ids, by name (names, detector names and synonyms), never by position."""

from __future__ import annotations

import numpy as np

from stages.errors import DataError
from stages.metrics import IGNORE_INDEX
from stages.vocab import Vocabulary, normalize


def name_index(vocabulary: Vocabulary) -> dict[str, int]:
    """Every accepted spelling of every class (name, detector name, synonyms) -> its id; background -> 0."""
    index = {"background": 0}
    for c in vocabulary.classes:
        for name in (c.name, c.detector_name, *c.synonyms):
            index.setdefault(normalize(name), c.id)
    return index


def label_table(dataset_names: dict[int, str], vocabulary: Vocabulary, source: str,
                ignored_ids: frozenset[int] = frozenset()) -> np.ndarray:
    """A 256-entry lookup table: the dataset's label value -> vocabulary id.

    Dataset classes outside the vocabulary map to 255 (ignored: they are objects, not background),
    as do vocabulary ids in ``ignored_ids`` (unseen classes in the real-seen modes). Every
    vocabulary class must be found in the dataset, else ``DataError``.
    """
    index = name_index(vocabulary)
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    found = set()
    for value, name in dataset_names.items():
        vocab_id = index.get(normalize(name))
        if vocab_id is not None:
            found.add(vocab_id)
            table[value] = IGNORE_INDEX if vocab_id in ignored_ids else vocab_id
    if missing := [c.name for c in vocabulary.classes if c.id not in found]:
        raise DataError(f"{source} has no class named {', '.join(missing)} (vocabulary '{vocabulary.name}'); "
                            f"its classes are {', '.join(n for n in dataset_names.values() if n != 'background')}")
    return table
