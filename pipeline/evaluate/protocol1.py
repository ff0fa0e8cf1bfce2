"""Protocol I of the paper: the grounding module's masks against the oracle's, seen and unseen classes apart.

A held-out test set is generated over all classes (prompt phase ``holdout``: other prompts and seeds
than the training and labelling phases); every image is labelled by the Mask R-CNN oracle (which
knows all classes) and by the grounding module (from the features captured in flight). Per class,
IoU = summed intersection / summed union over the (image, class) pairs where the oracle found the
class; mIoU is the mean over the seen classes and over the unseen classes.

The unseen mIoU is zero-shot only if the module never had an unseen class as a target: the report
carries the checkpoint's status (``zero_shot``, ``pipeline.dataset.zero_shot``) and says so.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from pipeline.config import RunConfig
from pipeline.dataset.zero_shot import checkpoint_zero_shot, describe, training_record
from pipeline.runtime import Runtime
from stages.grounding.metrics import IoU
from stages.grounding.model import class_embeddings
from stages.label import masks_from_probabilities
from stages.prompts import prompt_specs

PHASE = "holdout"


def evaluate_grounding(config: RunConfig, runtime: Runtime, n: int,
                       on_batch: Callable[[int], None] | None = None) -> dict:
    """Protocol I over ``n`` generated test images; a JSON-ready report."""
    vocab = config.vocabulary()
    specs = prompt_specs(vocab, vocab.classes, PHASE, config.seed, range(n), config.pair_fraction)
    iou, pairs, missed = IoU(), Counter(), Counter()
    started = time.time()
    batch_size = config.preset.batch_size
    for start in range(0, n, batch_size):
        batch = specs[start:start + batch_size]
        gen = runtime.diffusion.generate(batch, capture_features=True)
        oracle = runtime.oracle.label(gen.images, [list(s.classes) for s in batch])
        names = [[vocab[c].prompt_name for c in s.classes] for s in batch]
        embeddings, _ = class_embeddings(runtime.class_text, names, vocab.text_template, runtime.device)
        with torch.inference_mode():
            probs = torch.sigmoid(runtime.grounding({r: f.float() for r, f in gen.features.items()}, embeddings))
        for b, spec in enumerate(batch):
            if not gen.finite[b]:
                continue
            k = len(spec.classes)
            found = masks_from_probabilities(probs[b, :k], list(range(k)), list(spec.classes))
            predicted = {m.name: m.mask for m in found}
            for name in spec.classes:
                detection = oracle[b][name]
                if detection is None:
                    missed[name] += 1
                    continue
                pairs[name] += 1
                iou.add(name, predicted.get(name, np.zeros_like(detection.mask)), detection.mask)
        if on_batch:
            on_batch(len(batch))
    per_class = iou.per_class()
    seen = [c.name for c in vocab.seen]
    unseen = [c.name for c in vocab.unseen]
    record = training_record(config.out)
    zero_shot = checkpoint_zero_shot(record)
    return {
        "protocol": "I", "images": n, "preset": config.preset_name, "seed": config.seed,
        "zero_shot": zero_shot, "zero_shot_note": describe(zero_shot),
        "grounding": {k: record.get(k) for k in ("source", "root", "train_on_unseen", "steps")} if record else None,
        "miou_seen": iou.mean(seen), "miou_unseen": iou.mean(unseen),
        "classes": [{"name": c.name, "split": "seen" if c.seen else "unseen", "iou": per_class.get(c.name),
                     "pairs": pairs[c.name], "oracle_missed": missed[c.name]} for c in vocab.classes],
        "seconds": round(time.time() - started, 2),
    }
