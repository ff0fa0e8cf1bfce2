"""The oracle's contract, whatever detector runs behind it.

Grounded Diffusion's rule: the oracle mask of class c in a generated image is the top-scoring
instance of c; when the detector finds no instance of c, the image gets no label for c. A backend
runs its detector once per batch and returns each image's candidates (``Candidates``); the rule,
and the mapping of vocabulary classes to the detector's category ids by name, live here, shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from stages.errors import DatagenError
from stages.vocab import Vocabulary, VocabularyError

NOT_A_CLASS = ("__background__", "N/A")  # placeholders some detectors keep in their category lists


class OracleBackendError(DatagenError, RuntimeError):
    """An oracle backend that is not installed here, or a detector config it cannot use; one line."""


@dataclass(frozen=True)
class Detection:
    """One detected instance: a boolean HxW mask at image size, its score and its xyxy box in image pixels."""

    mask: np.ndarray
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Candidates:
    """One image's detections before any mask is made: label ids (indices into the detector's
    categories), scores and xyxy boxes in image pixels; ``masks(indices)`` makes the boolean
    (k, H, W) image-size masks of the chosen ones (only those: pasting all of them costs more)."""

    labels: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    masks: Callable[[torch.Tensor], torch.Tensor]


def detector_label_ids(vocab: Vocabulary, categories: tuple[str, ...]) -> dict[str, int]:
    """Vocabulary class name -> the detector's label id for that class's category, matched by name
    (torchvision's COCO ids keep the gaps of COCO's ids; detectron2's are contiguous).

    Unseen classes are mapped too (evaluation compares against the oracle on them); the pipeline
    keeps them out of the oracle's training data by never prompting for them in phase A.
    """
    ids = {name: i for i, name in enumerate(categories) if name not in NOT_A_CLASS}
    unknown = sorted({c.detector_name for c in vocab.classes} - ids.keys())
    if unknown:
        known = sorted(ids) if len(ids) <= 20 else f"{len(ids)} categories, e.g. {sorted(ids)[:5]}"
        raise VocabularyError(f"vocabulary {vocab.name}: detector names that are not the oracle's categories "
                              f"({known}): {unknown}")
    return {c.name: ids[c.detector_name] for c in vocab.classes}


class Oracle(ABC):
    """Labels each generated image with the top instance of each class its prompt names."""

    backend: ClassVar[str]

    def __init__(self, vocab: Vocabulary, categories: tuple[str, ...], score_threshold: float,
                 mask_threshold: float, device: str | torch.device):
        self.categories = categories
        self.label_ids = detector_label_ids(vocab, categories)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.device = torch.device(device)

    @abstractmethod
    def candidates(self, images: np.ndarray) -> list[Candidates]:
        """One batched forward pass over uint8 (B, H, W, 3) RGB images; each image's candidates."""

    def label(self, images: np.ndarray, class_names: list[list[str]]) -> list[dict[str, Detection | None]]:
        """For each image, class name -> its top detection (None when the detector finds none)."""
        if len(images) != len(class_names):
            raise ValueError(f"{len(images)} images but {len(class_names)} class-name lists")
        if unknown := sorted({n for names in class_names for n in names} - self.label_ids.keys()):
            raise ValueError(f"class names not in the vocabulary: {unknown}")
        if not class_names:
            return []
        return [self._top(found, names) for found, names in zip(self.candidates(images), class_names)]

    def _top(self, found: Candidates, names: list[str]) -> dict[str, Detection | None]:
        best: dict[str, int] = {}
        for name in names:
            scores = torch.where(found.labels == self.label_ids[name], found.scores, -torch.inf)
            if scores.numel() and scores.max() >= self.score_threshold:
                best[name] = int(scores.argmax())
        chosen = list(best.values())
        masks = found.masks(torch.tensor(chosen, dtype=torch.long, device=found.scores.device)).cpu().numpy() \
            if chosen else []
        result: dict[str, Detection | None] = dict.fromkeys(names)
        for mask, (name, i) in zip(masks, best.items()):
            result[name] = Detection(mask=mask, score=float(found.scores[i]),
                                     box=tuple(float(v) for v in found.boxes[i]))
        return result
