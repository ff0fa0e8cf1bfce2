"""Seconds per image of the oracle's two backends at the same input size, on one torch thread:
torchvision's COCO Mask R-CNN v2 (R50-FPN) and detectron2's model-zoo R50-FPN 3x
(COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml), random weights, batched as phase A runs them.

What a Mask R-CNN costs depends on how many instances reach its mask head, and random weights find
none at a real score threshold. So each backend is timed twice: with no detection (every box scored
background; backbone, RPN and box head only) and with the most its mask head runs on (every class
scored the same, 1/80, above the threshold of 0.01: 100 detections per image). Real weights on real
images fall in between.
Reported: CPU seconds of this process per image (on one thread, the wall time of an idle machine; on
a shared machine the wall time also counts other processes' turns).

    python benchmarks/oracle_backends.py [--sizes 512 800] [--images 2] [--image-size 512]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pipeline.config import resolve_vocabulary
from stages.oracle import Oracle, load_oracle

MODEL_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
SCORE_THRESHOLD = 0.01  # below 1/80, what each class scores when every box is every foreground class


def oracle(backend: str, input_size: int) -> Oracle:
    torch.manual_seed(0)
    return load_oracle(backend, None, resolve_vocabulary("voc"), input_size=input_size,
                       score_threshold=SCORE_THRESHOLD, config=MODEL_ZOO_CONFIG if backend == "detectron2" else None)


def set_detections(oracle: Oracle, some: bool) -> None:
    """Every (proposal, foreground class) pair scored the same (``some``) or every proposal background;
    boxes are the proposals, proposals the anchors (a random RPN's deltas make degenerate boxes)."""
    model = oracle.model
    if oracle.backend == "torchvision":
        predictor, rpn, background = model.roi_heads.box_predictor, model.rpn.head.bbox_pred, 0
    else:
        predictor, rpn = model.roi_heads.box_predictor, model.proposal_generator.rpn_head.anchor_deltas
        background = model.roi_heads.num_classes
    with torch.no_grad():
        for layer in (predictor.cls_score, predictor.bbox_pred, rpn):
            layer.weight.zero_()
            layer.bias.zero_()
        predictor.cls_score.bias[background] = -30.0 if some else 30.0


def measure(model: Oracle, images: np.ndarray, some: bool) -> dict:
    set_detections(model, some)
    names = [c.name for c in resolve_vocabulary("voc").classes]
    (first,) = model.candidates(images[:1])  # also the warm-up (first-call allocations)
    started = time.process_time()
    model.label(images, [names] * len(images))
    seconds = time.process_time() - started
    return {"backend": model.backend, "detections_per_image": len(first.labels),
            "cpu_s_per_image": round(seconds / len(images), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 800], help="detector input sizes (short side)")
    parser.add_argument("--images", type=int, default=2, help="images per timed batch")
    parser.add_argument("--image-size", type=int, default=512, help="generated image size (SD 1.5: 512)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = np.random.default_rng(0).integers(0, 256, (args.images, args.image_size, args.image_size, 3), np.uint8)
    rows = []
    for size in args.sizes:
        models = [oracle(backend, size) for backend in ("torchvision", "detectron2")]
        rows += [dict(measure(model, images, some), input_size=size) for some in (False, True) for model in models]
    print(f"{'backend':<12} {'input':>5} {'detections':>10} {'CPU s/image':>11}")
    for r in rows:
        print(f"{r['backend']:<12} {r['input_size']:>5} {r['detections_per_image']:>10} {r['cpu_s_per_image']:>11.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
