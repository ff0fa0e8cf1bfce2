"""Real annotated images in the PASCAL VOC layout as grounding-training batches (the paper's appendix).

The folder is read by ``pipeline.dataset.voc`` as the ZS3 benchmark reads it: mask values name classes
(VOC's own, or the folder's ``labels.txt``) and become vocabulary ids by name; 255 is not scored.
Each image is resized (shorter side) and centre-cropped to the preset's size; its prompt names the
classes it shows; the trainer VAE-encodes it and noises it to the capture step with the sample's own
seeded noise.

Zero-shot: unseen-class pixels are ignored (255), like VOC's borders, so an unseen class is never a
target nor named in a prompt, and an image that shows only unseen classes is skipped. Only
``train_on_unseen`` (``datagen train-annotated --train-on-unseen``) makes them targets, and the
checkpoint's record then says it is not zero-shot (``pipeline.dataset.zero_shot``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from pipeline.dataset.labels import label_table
from pipeline.dataset.voc import VocImage, label_names, read_pair, resize_crop
from stages.errors import DataError
from stages.metrics import IGNORE_INDEX
from stages.prompts import prompt_for
from stages.vocab import Vocabulary


def load_annotated(item: VocImage, vocab: Vocabulary, size: int, train_on_unseen: bool = False) -> dict | None:
    """One image as a training sample; None when it shows no class to train on. Unseen-class pixels are
    ignored (255) unless ``train_on_unseen``."""
    names, source = label_names(item.image.parent.parent)
    ignored = frozenset() if train_on_unseen else frozenset(c.id for c in vocab.unseen)
    table = label_table(names, vocab, source, ignored)
    image, mask = read_pair(item)
    image = resize_crop(Image.fromarray(image), size, Image.BICUBIC)
    raw = resize_crop(Image.fromarray(mask), size, Image.NEAREST)
    if unnamed := sorted(set(np.unique(raw).tolist()) - set(names) - {IGNORE_INDEX}):
        raise DataError(f"{item.mask} holds class index {unnamed[-1]} but the vocabulary '{vocab.name}' has "
                        f"{len(vocab.classes)} classes and {source} names no class {unnamed[-1]}")
    seg = table[raw]
    ids = sorted(int(v) for v in np.unique(seg) if v not in (0, IGNORE_INDEX))
    if not ids:
        return None
    by_id = {c.id: c for c in vocab.classes}
    classes = [by_id[i] for i in ids]
    names = [c.prompt_name for c in classes]
    return {"id": item.id, "image": image, "prompt": prompt_for(vocab, names), "names": names,
            "targets": np.stack([seg == i for i in ids]).astype(np.float32), "ignore": seg == IGNORE_INDEX}


def _collate(items: list[dict], timestep: int, seeds: list[int]) -> dict:
    k = max(len(i["names"]) for i in items)
    size = items[0]["image"].shape[0]
    targets = np.zeros((len(items), k, size, size), np.float32)
    has_target = np.zeros((len(items), k), bool)
    for b, item in enumerate(items):
        targets[b, : len(item["names"])] = item["targets"]
        has_target[b, : len(item["names"])] = True
    images = torch.from_numpy(np.stack([i["image"] for i in items])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return {"images": images, "noise_seeds": seeds, "timestep": timestep,
            "prompts": [i["prompt"] for i in items], "names": [i["names"] for i in items],
            "targets": torch.from_numpy(targets), "has_target": torch.from_numpy(has_target),
            "ignore": torch.from_numpy(np.stack([i["ignore"] for i in items])), "ids": [i["id"] for i in items]}


def noise_seed(seed: int, epoch: str, image_id: str) -> int:
    return zlib.crc32(f"{seed}/{epoch}/{image_id}".encode())


def annotated_batches(items: list[VocImage], vocab: Vocabulary, size: int, timestep: int,
                      batch_size: int, seed: int, skip: int = 0, train_on_unseen: bool = False) -> Iterator[dict]:
    """Endless, deterministic training stream: each epoch reshuffles the images and draws new noise.

    The first ``skip`` batches are dropped (a resumed run continues the same stream). Unseen classes are
    ignored unless ``train_on_unseen``.
    """
    produced = 0
    for epoch in range(10**9):
        order = [items[i] for i in np.random.default_rng([seed, epoch]).permutation(len(items))]
        epoch_batches = 0
        for start in range(0, len(order), batch_size):
            samples = [s for s in (load_annotated(i, vocab, size, train_on_unseen)
                                   for i in order[start:start + batch_size]) if s]
            if not samples:
                continue
            epoch_batches += 1
            produced += 1
            if produced > skip:
                yield _collate(samples, timestep, [noise_seed(seed, str(epoch), s["id"]) for s in samples])
        if not epoch_batches:
            raise DataError("the annotated images show no class of the vocabulary" if train_on_unseen else
                            "the annotated images show no seen class of the vocabulary (unseen classes are "
                            "ignored: zero-shot)")


def annotated_validation_batches(items: list[VocImage], vocab: Vocabulary, size: int, timestep: int,
                                 batch_size: int, seed: int, train_on_unseen: bool = False) -> Iterator[dict]:
    """One pass over ``items`` in order, with fixed noise; the classes are those of training."""
    for start in range(0, len(items), batch_size):
        samples = [s for s in (load_annotated(i, vocab, size, train_on_unseen)
                               for i in items[start:start + batch_size]) if s]
        if samples:
            yield _collate(samples, timestep, [noise_seed(seed, "val", s["id"]) for s in samples])
