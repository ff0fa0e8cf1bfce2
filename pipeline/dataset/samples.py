"""Sample encoding: what one WebDataset sample holds (see docs/format.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.dataset.shards import encode_array, encode_image, encode_mask
from stages.prompts import PromptSpec


def sample_key(index: int) -> str:
    return f"{index:012d}"


def rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool (H, W) mask, counts as ASCII."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def instance(class_id: int, name: str, mask: np.ndarray, score: float, box=None) -> dict:
    entry = {"class_id": class_id, "name": name, "score": round(float(score), 6),
             "area": int(mask.sum()), "segmentation": rle(mask)}
    if box is not None:
        entry["bbox_xyxy"] = [round(float(v), 2) for v in box]
    return entry


def encode_sample(spec: PromptSpec, class_ids: list[int], image: np.ndarray, image_format: str,
                  labeler: str, instances: list[dict], provenance: dict,
                  seg: np.ndarray | None = None, latent: np.ndarray | None = None,
                  labeler_settings: dict | None = None, labeler_stats: dict | None = None) -> dict:
    meta = {
        "prompt": spec.prompt, "classes": list(spec.classes), "class_ids": class_ids,
        "seed": spec.seed, "index": spec.index, "labeler": labeler, "instances": instances,
        "height": int(image.shape[0]), "width": int(image.shape[1]), "provenance": provenance,
    }
    if labeler_settings is not None:  # settings beyond the checkpoint's, e.g. the attention labeler's
        meta["labeler_settings"] = labeler_settings
    if labeler_stats is not None:  # the labeler's figures for this sample, e.g. the consensus's agreement
        meta["labeler_stats"] = labeler_stats
    sample = {"__key__": sample_key(spec.index), image_format: encode_image(image, image_format),
              "json": json.dumps(meta, sort_keys=True).encode()}
    if seg is not None:
        sample["seg.png"] = encode_mask(seg)
    if latent is not None:
        sample["latent.npy"] = encode_array(latent.astype(np.float32))
    return sample


@dataclass
class RawInstance:
    """One labelled instance before encoding: a bool (H, W) mask and its score (and oracle box)."""

    class_id: int
    name: str
    mask: np.ndarray
    score: float
    box: tuple | None = None


@dataclass
class LabelledSample:
    """A sample as the models leave it (arrays, no bytes): what a GPU worker hands to the encoder."""

    spec: PromptSpec
    class_ids: list[int]
    image: np.ndarray
    labeler: str
    instances: list[RawInstance]
    provenance: dict
    seg: np.ndarray | None = None
    latent: np.ndarray | None = None
    labeler_settings: dict | None = None
    labeler_stats: dict | None = None

    def encode(self, image_format: str) -> dict:
        """The WebDataset sample: image and mask encoding, instance RLEs (CPU work, no model)."""
        instances = [instance(i.class_id, i.name, i.mask, i.score, i.box) for i in self.instances]
        return encode_sample(self.spec, self.class_ids, self.image, image_format, self.labeler, instances,
                             self.provenance, seg=self.seg, latent=self.latent,
                             labeler_settings=self.labeler_settings, labeler_stats=self.labeler_stats)
