"""Streams oracle shards (phase A output) as grounding-training batches, split into train and
validation by sample key. A sample naming an unseen class is refused: phase B's checkpoint is recorded as
zero-shot."""

from __future__ import annotations

import io
import json
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from pycocotools import mask as mask_utils

from stages.errors import DataError
from stages.vocab import Vocabulary


class NoTrainingSamples(DataError):
    """Every oracle sample fell into the validation split (or there are none)."""


def _decode(sample: dict, vocab: Vocabulary) -> dict:
    meta = json.loads(sample["json"])
    if unseen := [name for name in meta["classes"] if not vocab[name].seen]:
        raise DataError(f"{sample['__url__']} key {sample['__key__']} names the unseen class '{unseen[0]}': phase B "
                        "trains on seen classes only (zero-shot), and phase A writes no such sample")
    found = {inst["name"]: inst for inst in meta["instances"]}
    h, w = meta["height"], meta["width"]
    targets = np.zeros((len(meta["classes"]), h, w), dtype=np.float32)
    has_target = np.zeros(len(meta["classes"]), dtype=bool)
    for k, name in enumerate(meta["classes"]):
        if name in found:
            rle = dict(found[name]["segmentation"], counts=found[name]["segmentation"]["counts"].encode())
            targets[k] = mask_utils.decode(rle)
            has_target[k] = True
    latent = np.load(io.BytesIO(sample["latent.npy"]), allow_pickle=False)
    return {"latent": latent, "timestep": meta["provenance"]["capture_timestep"], "prompt": meta["prompt"],
            "names": [vocab[n].prompt_name for n in meta["classes"]], "targets": targets,
            "has_target": has_target}


def _collate(items: list[dict]) -> dict:
    k = max(len(i["names"]) for i in items)
    h, w = items[0]["targets"].shape[1:]
    targets = np.zeros((len(items), k, h, w), dtype=np.float32)
    has_target = np.zeros((len(items), k), dtype=bool)
    for b, item in enumerate(items):
        targets[b, : len(item["names"])] = item["targets"]
        has_target[b, : len(item["names"])] = item["has_target"]
    timesteps = {i["timestep"] for i in items}
    if len(timesteps) != 1:
        raise ValueError(f"oracle shards mix capture timesteps {sorted(timesteps)}")
    return {"latents": torch.from_numpy(np.stack([i["latent"] for i in items])),
            "timestep": timesteps.pop(), "prompts": [i["prompt"] for i in items],
            "names": [i["names"] for i in items], "targets": torch.from_numpy(targets),
            "has_target": torch.from_numpy(has_target)}


def is_validation(key: str, fraction: float) -> bool:
    """Whether a sample belongs to the held-out validation split: a fixed function of its key."""
    return zlib.crc32(key.encode()) % 10_000 < round(fraction * 10_000)


def oracle_batches(shards: list[Path], vocab: Vocabulary, batch_size: int, seed: int,
                   val_fraction: float = 0.0, skip: int = 0, shuffle_buffer: int = 256) -> Iterator[dict]:
    """Endless, deterministic stream of training batches: each epoch reshuffles shards and samples.

    Samples of the validation split (``is_validation``) are left out; the first ``skip`` batches are
    passed over without decoding (a resumed run continues the same stream).
    """
    if not shards:
        raise ValueError("no oracle shards to train on")
    urls = [str(p) for p in shards]
    produced = 0
    for epoch in range(10**9):
        rng = np.random.default_rng([seed, epoch])
        order = [urls[i] for i in rng.permutation(len(urls))]
        stream = wds.WebDataset(order, shardshuffle=False, empty_check=False) \
            .select(lambda s: not is_validation(s["__key__"], val_fraction)) \
            .shuffle(shuffle_buffer, rng=random.Random(int(rng.integers(2**31))))
        raw, seen = [], 0
        for sample in stream:
            seen += 1
            raw.append(sample)
            if len(raw) == batch_size:
                produced += 1
                if produced > skip:
                    yield _collate([_decode(r, vocab) for r in raw])
                raw = []
        if raw:
            produced += 1
            if produced > skip:
                yield _collate([_decode(r, vocab) for r in raw])
        if not seen:
            raise NoTrainingSamples("the oracle shards hold no training samples")


def oracle_validation_batches(shards: list[Path], vocab: Vocabulary, batch_size: int,
                              val_fraction: float) -> Iterator[dict]:
    """One pass, in shard order, over the validation split of the oracle shards."""
    stream = wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False) \
        .select(lambda s: is_validation(s["__key__"], val_fraction))
    batch = []
    for sample in stream:
        batch.append(_decode(sample, vocab))
        if len(batch) == batch_size:
            yield _collate(batch)
            batch = []
    if batch:
        yield _collate(batch)
