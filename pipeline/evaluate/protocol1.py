"""Protocol I of the paper: a labeler's masks against the oracle's, seen and unseen classes apart.

A held-out test set is generated over all classes (prompt phase ``holdout``: other prompts and seeds
than the training and labelling phases); every image is labelled by the Mask R-CNN oracle (which
knows all classes) and by each labeler asked for, all from one sampling pass that records what each
reads. Per labeler and class, IoU = summed intersection / summed union over the (image, class) pairs
where the oracle found the class; mIoU is the mean over the seen classes and over the unseen classes.
Pixels a labeler ignores (255 in its dataset) count as not the class. The one-class and two-class
prompts are also scored apart (``pipeline.evaluate.scores``).

An unseen mIoU is zero-shot only if the labeler never had an unseen class as a target: the grounding
checkpoint says whether it had (``pipeline.dataset.zero_shot``); a labeler that needs no training had
none. The report carries each labeler's status and says so.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset.checkpoint import training_record
from pipeline.dataset.zero_shot import checkpoint_zero_shot, combine, describe
from pipeline.evaluate.scores import GroupedIoU
from pipeline.runtime import Runtime
from stages.labelers import LABELERS, Labeler, Request, sample
from stages.prompts import prompt_specs

PHASE = "holdout"
ALL = "all"  # --labeler all: every registered labeler


def labeler_summary(labeler: Labeler, config: RunConfig) -> dict:
    """A labeler's zero-shot status and what it is (the checkpoint's training, its own description)."""
    details = {"details": labeler.describe()} if labeler.describe() is not None else {}
    if not labeler.trained:
        return {"zero_shot": True, "zero_shot_note": describe(True) + f" (the {labeler.name} labeler trains nothing)",
                **details}
    record = training_record(config.out)
    zero_shot = checkpoint_zero_shot(record)
    return {"zero_shot": zero_shot, "zero_shot_note": describe(zero_shot), **details,
            "grounding": {k: record.get(k) for k in ("source", "root", "train_on_unseen", "steps")} if record else None}


def evaluate_labelers(config: RunConfig, runtime: Runtime, n: int, labelers: tuple[str, ...] = ("grounding",),
                      on_batch: Callable[[int], None] | None = None) -> dict:
    """Protocol I over ``n`` generated test images for each of ``labelers``; a JSON-ready report."""
    vocab = config.vocabulary()
    labeling = runtime.labelers(labelers)
    specs = prompt_specs(vocab, vocab.classes, PHASE, config.seed, range(n), config.pair_fraction)
    scored, pairs, missed = GroupedIoU(labelers), Counter(), Counter()
    started = time.time()
    batch_size = config.preset.batch_size
    for start in range(0, n, batch_size):
        batch = specs[start:start + batch_size]
        requests = [Request.of(spec, vocab) for spec in batch]
        sampled = sample(runtime.diffusion, labeling, batch, [r.prompt_names for r in requests])
        gen = sampled.generation
        oracle = runtime.oracle.label(gen.images, [list(s.classes) for s in batch])
        predicted = {labeler.name: [{m.name: m.mask for m in labels.masks}
                                    for labels in labeler.label(sampled, requests)] for labeler in labeling}
        for b, spec in enumerate(batch):
            if not gen.finite[b]:
                continue
            group = scored.image(len(spec.classes))
            for name in spec.classes:
                detection = oracle[b][name]
                if detection is None:
                    missed[name] += 1
                    continue
                pairs[name] += 1
                for labeler in labelers:
                    scored.add(labeler, group, name,
                               predicted[labeler][b].get(name, np.zeros_like(detection.mask)), detection.mask)
        if on_batch:
            on_batch(len(batch))
    seen = [c.name for c in vocab.seen]
    unseen = [c.name for c in vocab.unseen]
    iou = scored.overall
    per_class = {labeler: iou[labeler].per_class() for labeler in labelers}
    scores = {labeler.name: {"miou_seen": iou[labeler.name].mean(seen), "miou_unseen": iou[labeler.name].mean(unseen),
                             **labeler_summary(labeler, config)} for labeler in labeling}
    zero_shot = combine(s["zero_shot"] for s in scores.values())
    return {
        "protocol": "I", "images": n, "preset": config.preset_name, "seed": config.seed,
        "labelers": list(labelers), "zero_shot": zero_shot, "zero_shot_note": describe(zero_shot),
        "scores": scores, "by_classes": scored.by_group(seen, unseen),
        "classes": [{"name": c.name, "split": "seen" if c.seen else "unseen",
                     "iou": {labeler: per_class[labeler].get(c.name) for labeler in labelers},
                     "pairs": pairs[c.name], "oracle_missed": missed[c.name]} for c in vocab.classes],
        "seconds": round(time.time() - started, 2),
    }


def labelers_of(choice: str) -> tuple[str, ...]:
    """``--labeler`` of `datagen eval grounding`: one labeler, or ``all``."""
    if choice not in (*LABELERS, ALL):
        raise ConfigError(f"--labeler must be one of {', '.join((*LABELERS, ALL))}, not '{choice}'")
    return tuple(LABELERS) if choice == ALL else (choice,)
