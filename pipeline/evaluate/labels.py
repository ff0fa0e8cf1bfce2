"""Labels against the truth: every labeler on annotated images, scored against their masks.

Protocol I scores a labeler against the oracle on generated images; here the reference is a human (or
rendered) mask. The images were not sampled, so they are inverted to the capture step: each one is
resized and centre-cropped to the preset's size (as grounding training on annotated images does),
encoded by the VAE and noised to the capture timestep with its own seeded noise; one guided UNet pass
there, with a prompt naming the classes its mask shows (the vocabulary's one-class or pair template),
records what the labelers read through the code generation uses (``stages.labelers.invert``).

Scores: per labeler and class, IoU = summed intersection / summed union over the images that show the
class, the mask's ignored pixels (255) left out and a labeler's ignored pixels counting as not the
class; mIoU of the seen and of the unseen classes; the same apart for one-class and multi-class images
(``pipeline.evaluate.scores``). Absent class: a second UNet pass on the same x_t with the prompt
naming, after the image's classes, one class it does not show (drawn from the seed), the labeler asked
for all of them as phase C asks; the fraction of the image's scored pixels it gives the absent class
is what a dataset would carry where the generator failed to draw a prompted class.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset.layout import MANIFEST
from pipeline.dataset.shards import read_json_object
from pipeline.dataset.voc import resize_crop
from pipeline.dataset.zero_shot import combine, describe
from pipeline.evaluate.protocol1 import labeler_summary
from pipeline.evaluate.scores import GroupedIoU
from pipeline.evaluate.zs3.real import DEFAULT_SPLITS, RealSegmentation, detect_format, real_split
from pipeline.runtime import Runtime
from stages.labelers import Request, invert
from stages.metrics import IGNORE_INDEX
from stages.prompts import PHASES, prompt_for
from stages.vocab import ClassInfo, Vocabulary


def check_dataset(config: RunConfig) -> None:
    """``--out``'s dataset, when it holds one, was made with this model preset and Stable Diffusion: its
    grounding checkpoint reads their features."""
    path = config.out / MANIFEST
    if not path.exists():
        return
    try:
        made = read_json_object(path).get("config", {})
        theirs = (made["preset_name"], made["preset"]["sd"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is damaged: it cannot tell which models made {config.out}") from err
    ours = (config.preset_name, config.preset.sd)
    if theirs != ours:
        raise ConfigError(f"{config.out} holds a dataset made with model preset '{theirs[0]}' (Stable Diffusion "
                          f"'{theirs[1]}'), not '{ours[0]}' ('{ours[1]}'): pass the --models and --sd-path it was "
                          "made with")


def real_images(root: Path, fmt: str, split: str | None, vocab: Vocabulary, size: int) -> RealSegmentation:
    """The annotated split as (image, mask) pairs of ``size`` x ``size``, the mask in vocabulary ids, read by
    the ZS3 readers; a folder that is not one, without masks or without the vocabulary's classes is one line."""
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt not in DEFAULT_SPLITS:
        raise ConfigError(f"--real-format must be auto, voc or coco, not '{fmt}'")

    def crop(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (resize_crop(Image.fromarray(image), size, Image.BICUBIC),
                resize_crop(Image.fromarray(mask), size, Image.NEAREST))

    return real_split(root, fmt, split or DEFAULT_SPLITS[fmt][1], vocab, crop)


def _absent(vocab: Vocabulary, shown: list[ClassInfo], rng: np.random.Generator) -> list[ClassInfo]:
    """One class the image does not show, drawn by ``rng``; none when it shows every class."""
    others = [c for c in vocab.classes if c not in shown]
    return [others[int(rng.integers(len(others)))]] if others else []


def _request(classes: list[ClassInfo]) -> Request:
    return Request([c.name for c in classes], [c.id for c in classes], [c.prompt_name for c in classes])


def evaluate_labels(config: RunConfig, runtime: Runtime, real: RealSegmentation, labelers: tuple[str, ...],
                    n: int | None = None, on_batch: Callable[[int], None] | None = None) -> dict:
    """Every labeler of ``labelers`` on the first ``n`` images of ``real`` (all when None); a JSON-ready report."""
    vocab = config.vocabulary()
    by_id = {c.id: c for c in vocab.classes}
    labeling = runtime.labelers(labelers)
    diffusion = runtime.diffusion
    timestep = diffusion.capture_timestep
    total = len(real) if n is None else min(n, len(real))
    scored, shown_in, absent_share = GroupedIoU(labelers), Counter(), {name: [] for name in labelers}
    no_class = 0
    started = time.time()
    for start in range(0, total, config.preset.batch_size):
        indices = range(start, min(start + config.preset.batch_size, total))
        batch = []
        for i in indices:
            image, truth = real[i]
            shown = [by_id[int(v)] for v in np.unique(truth) if v not in (0, IGNORE_INDEX)]
            if not shown:
                no_class += 1  # nothing to name in a prompt
                continue
            rng = np.random.default_rng([config.seed, PHASES["eval labels"], i])  # its noise, absent class
            batch.append((image, truth, shown, int(rng.integers(2**31 - 1)), _absent(vocab, shown, rng)))
        if batch:
            images = np.stack([b[0] for b in batch])
            pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
            latents = diffusion.latents_from_images(pixels, timestep, [b[3] for b in batch])
            requests = [_request(b[2]) for b in batch]
            asked = [_request([*b[2], *b[4]]) for b in batch]
            passes = [invert(diffusion, labeling, images, latents, timestep,
                             [prompt_for(vocab, r.prompt_names) for r in rs], [r.prompt_names for r in rs])
                      for rs in (requests, asked)]
            answers = {labeler.name: (labeler.label(passes[0], requests), labeler.label(passes[1], asked))
                       for labeler in labeling}
            for b, (_, truth, shown, _, absent) in enumerate(batch):
                if not passes[0].generation.finite[b]:
                    continue
                valid = truth != IGNORE_INDEX
                group = scored.image(len(shown))
                shown_in.update(c.name for c in shown)
                for name, (labels, with_absent) in answers.items():
                    masks = {m.name: m.mask for m in labels[b].masks}
                    for c in shown:
                        predicted = masks.get(c.name, np.zeros_like(valid))
                        scored.add(name, group, c.name, predicted & valid, (truth == c.id) & valid)
                    for c in absent:
                        given = next((m.mask for m in with_absent[b].masks if m.name == c.name), None)
                        absent_share[name].append(0.0 if given is None else
                                                  float((given & valid).sum() / max(1, valid.sum())))
        if on_batch:
            on_batch(len(indices))
    seen, unseen = [c.name for c in vocab.seen], [c.name for c in vocab.unseen]
    iou = scored.overall
    per_class = {name: iou[name].per_class() for name in labelers}
    scores = {labeler.name: {"miou_seen": iou[labeler.name].mean(seen), "miou_unseen": iou[labeler.name].mean(unseen),
                             "absent_pixels": float(np.mean(absent_share[labeler.name]))
                             if absent_share[labeler.name] else None,
                             **labeler_summary(labeler, config)} for labeler in labeling}
    zero_shot = combine(s["zero_shot"] for s in scores.values())
    seconds = time.time() - started
    return {
        "evaluation": "labels vs truth", "images": total, "scored_images": sum(scored.images.values()),
        "images_without_class": no_class, "preset": config.preset_name, "seed": config.seed, "timestep": timestep,
        "labelers": list(labelers), "zero_shot": zero_shot, "zero_shot_note": describe(zero_shot),
        "scores": scores, "by_classes": scored.by_group(seen, unseen),
        "classes": [{"name": c.name, "split": "seen" if c.seen else "unseen",
                     "iou": {name: per_class[name].get(c.name) for name in labelers},
                     "images": shown_in[c.name]} for c in vocab.classes],
        "seconds": round(seconds, 2), "seconds_per_image": round(seconds / total, 4) if total else None,
    }
