"""Protocol I of the paper: a labeler's masks against the oracle's, seen and unseen classes apart.

A held-out test set is generated over all classes (prompt phase ``holdout``: other prompts and seeds
than the training and labelling phases); every image is labelled by the Mask R-CNN oracle (which
knows all classes) and by each labeler asked for: the grounding module (from the features captured in
flight) and/or the attention labeler (from the cross-attention recorded in flight). Both label the
same images, from one sampling pass. Per labeler and class, IoU = summed intersection / summed union
over the (image, class) pairs where the oracle found the class; mIoU is the mean over the seen classes
and over the unseen classes. The attention labeler's uncertain pixels (255 in its dataset) count as
not the class.

An unseen mIoU is zero-shot only if the labeler never had an unseen class as a target: the grounding
module's checkpoint says whether it had (``pipeline.dataset.zero_shot``); the attention labeler is
trained on nothing. The report carries each labeler's status and says so.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from pipeline.config import LABELERS, ConfigError, RunConfig
from pipeline.dataset.zero_shot import checkpoint_zero_shot, combine, describe, training_record
from pipeline.runtime import Runtime
from stages.grounding.metrics import IoU
from stages.grounding.model import class_embeddings
from stages.label import masks_from_probabilities
from stages.prompts import PromptSpec, prompt_specs

PHASE = "holdout"
BOTH = "both"  # --labeler both: every labeler of LABELERS


def _grounding_masks(runtime: Runtime, batch: list[PromptSpec], names: list[list[str]], features,
                     template: str) -> list[dict[str, np.ndarray]]:
    embeddings, _ = class_embeddings(runtime.class_text, names, template, runtime.device)
    with torch.inference_mode():
        probs = torch.sigmoid(runtime.grounding({r: f.float() for r, f in features.items()}, embeddings))
    found = [masks_from_probabilities(probs[b, :len(s.classes)], list(range(len(s.classes))), list(s.classes))
             for b, s in enumerate(batch)]
    return [{m.name: m.mask for m in masks} for masks in found]


def _attention_masks(runtime: Runtime, batch: list[PromptSpec],
                     maps: list[torch.Tensor]) -> list[dict[str, np.ndarray]]:
    labels = [runtime.attention.label(maps[b], list(range(len(s.classes))), list(s.classes))
              for b, s in enumerate(batch)]
    return [{m.name: m.mask for m in found.masks} for found in labels]


def _labeler_summary(labeler: str, config: RunConfig, runtime: Runtime) -> dict:
    """A labeler's zero-shot status and what it is (the checkpoint's training, or the attention settings)."""
    if labeler == "attention":
        return {"zero_shot": True, "zero_shot_note": describe(True) + " (the attention labeler trains nothing)",
                "attention": runtime.attention.describe()}
    record = training_record(config.out)
    zero_shot = checkpoint_zero_shot(record)
    return {"zero_shot": zero_shot, "zero_shot_note": describe(zero_shot),
            "grounding": {k: record.get(k) for k in ("source", "root", "train_on_unseen", "steps")} if record else None}


def evaluate_labelers(config: RunConfig, runtime: Runtime, n: int, labelers: tuple[str, ...] = ("grounding",),
                      on_batch: Callable[[int], None] | None = None) -> dict:
    """Protocol I over ``n`` generated test images for each of ``labelers``; a JSON-ready report."""
    vocab = config.vocabulary()
    specs = prompt_specs(vocab, vocab.classes, PHASE, config.seed, range(n), config.pair_fraction)
    iou, pairs, missed = {name: IoU() for name in labelers}, Counter(), Counter()
    started = time.time()
    batch_size = config.preset.batch_size
    for start in range(0, n, batch_size):
        batch = specs[start:start + batch_size]
        names = [[vocab[c].prompt_name for c in s.classes] for s in batch]
        if "attention" in labelers:
            gen, maps = runtime.attention.generate(batch, names, capture_features="grounding" in labelers)
        else:
            gen = runtime.diffusion.generate(batch, capture_features=True)
        oracle = runtime.oracle.label(gen.images, [list(s.classes) for s in batch])
        predicted = {}
        if "grounding" in labelers:
            predicted["grounding"] = _grounding_masks(runtime, batch, names, gen.features, vocab.text_template)
        if "attention" in labelers:
            predicted["attention"] = _attention_masks(runtime, batch, maps)
        for b, spec in enumerate(batch):
            if not gen.finite[b]:
                continue
            for name in spec.classes:
                detection = oracle[b][name]
                if detection is None:
                    missed[name] += 1
                    continue
                pairs[name] += 1
                for labeler in labelers:
                    iou[labeler].add(name, predicted[labeler][b].get(name, np.zeros_like(detection.mask)),
                                     detection.mask)
        if on_batch:
            on_batch(len(batch))
    seen = [c.name for c in vocab.seen]
    unseen = [c.name for c in vocab.unseen]
    per_class = {labeler: iou[labeler].per_class() for labeler in labelers}
    scores = {labeler: {"miou_seen": iou[labeler].mean(seen), "miou_unseen": iou[labeler].mean(unseen),
                        **_labeler_summary(labeler, config, runtime)} for labeler in labelers}
    zero_shot = combine(s["zero_shot"] for s in scores.values())
    return {
        "protocol": "I", "images": n, "preset": config.preset_name, "seed": config.seed,
        "labelers": list(labelers), "zero_shot": zero_shot, "zero_shot_note": describe(zero_shot),
        "scores": scores,
        "classes": [{"name": c.name, "split": "seen" if c.seen else "unseen",
                     "iou": {labeler: per_class[labeler].get(c.name) for labeler in labelers},
                     "pairs": pairs[c.name], "oracle_missed": missed[c.name]} for c in vocab.classes],
        "seconds": round(time.time() - started, 2),
    }


def labelers_of(choice: str) -> tuple[str, ...]:
    """``--labeler`` of `datagen eval grounding`: one labeler, or ``both``."""
    if choice not in (*LABELERS, BOTH):
        raise ConfigError(f"--labeler must be one of {', '.join((*LABELERS, BOTH))}, not '{choice}'")
    return LABELERS if choice == BOTH else (choice,)
