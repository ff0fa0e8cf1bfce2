"""The grounding labeler: the paper's grounding module, trained in phases A and B, reads the UNet's
features at the capture step and the class names' text embeddings, and predicts one mask per class."""

from __future__ import annotations

import torch

from stages.grounding.model import ClassTextEncoder, GroundingModule, class_embeddings
from stages.label import ClassMask, SampleLabels, batch_masks
from stages.labelers.base import Labeler, LabelerModels, Request, Sampled


class GroundingLabeler(Labeler):
    name = "grounding"
    trained = True
    settings_keys = ("grounding",)
    card_opening = """Synthetic semantic segmentation data made by Grounded Diffusion (Li et al., ICCV 2023): Stable
Diffusion images, labelled by a grounding module trained on the seen classes (Mask R-CNN oracle
masks, or annotated images), which also labels the unseen ones."""
    needs_features = True

    def __init__(self, module: GroundingModule, text: ClassTextEncoder, template: str, device: str):
        self.module, self.text, self.template, self.device = module, text, template, device

    @classmethod
    def load(cls, models: LabelerModels) -> GroundingLabeler:
        return cls(models.grounding, models.class_text, models.text_template, models.device)

    def card_details(self) -> str:
        return "the grounding module"

    def probabilities(self, sampled: Sampled, requests: list[Request]) -> torch.Tensor:
        """(B, K, H, W) where the module runs: each sample's class probabilities, K the batch's most classes."""
        embeddings, _ = class_embeddings(self.text, [r.prompt_names for r in requests], self.template, self.device)
        with torch.inference_mode():  # features as captured (the module's dtype), the whole batch in one pass
            return torch.sigmoid(self.module(sampled.generation.features, embeddings))

    def label(self, sampled: Sampled, requests: list[Request]) -> list[SampleLabels]:
        found = batch_masks(self.probabilities(sampled, requests), [len(r.class_ids) for r in requests])
        return [SampleLabels([ClassMask(r.class_ids[c], r.names[c], mask, score) for c, mask, score in masks])
                for masks, r in zip(found, requests)]
