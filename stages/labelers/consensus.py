"""The consensus labeler: the grounding module and the attention maps label the same sampling pass;
a pixel keeps its class where both give it the same one (background included), and is ignored (255)
where they disagree or the attention labeler is unsure. Training data then holds only the pixels two
independent labelers agree on; each sample's json keeps the fraction of its pixels that agreed
(``labeler_stats.agreement``). The nearest published idea is Dataset Diffusion's ignored band of
uncertain pixels; no paper combines the two labelers."""

from __future__ import annotations

from stages.label import ClassMask, SampleLabels
from stages.labelers.attention import AttentionLabeler
from stages.labelers.base import Labeler, LabelerModels, Request, Sampled
from stages.labelers.grounding import GroundingLabeler


def agreement(grounding: SampleLabels, attention: SampleLabels, shape: tuple[int, int]) -> SampleLabels:
    """The pixels where both labelings give the same class; a class's score is the mean of the two scores."""
    ours, theirs = grounding.segmentation(shape), attention.segmentation(shape)
    agreed = ours == theirs  # an unsure attention pixel is 255, which the grounding map never holds
    scores = {m.class_id: m.score for m in attention.masks}
    kept = [(m, m.mask & agreed) for m in grounding.masks]
    masks = [ClassMask(m.class_id, m.name, mask, (m.score + scores[m.class_id]) / 2) for m, mask in kept if mask.any()]
    return SampleLabels(masks, ~agreed, {"agreement": round(float(agreed.mean()), 6)})


class ConsensusLabeler(Labeler):
    name = "consensus"
    trained = True
    settings_keys = ("grounding", "attention")
    card_opening = """Synthetic semantic segmentation data made by datagen's consensus labeler: Stable Diffusion
images, labelled by a grounding module trained on the seen classes (Grounded Diffusion, Li et al., ICCV
2023) and by the UNet's own cross-attention maps; a pixel keeps its class only where both agree, and is
ignored (255) elsewhere."""
    needs_features = True

    def __init__(self, grounding: GroundingLabeler, attention: AttentionLabeler):
        self.grounding, self.attention, self.recorder = grounding, attention, attention

    @classmethod
    def load(cls, models: LabelerModels) -> ConsensusLabeler:
        return cls(GroundingLabeler.load(models), AttentionLabeler.load(models))

    @classmethod
    def check(cls, models: LabelerModels) -> None:
        AttentionLabeler.check(models)

    def label(self, sampled: Sampled, requests: list[Request]) -> list[SampleLabels]:
        shape = sampled.generation.images.shape[1:3]
        return [agreement(g, a, shape) for g, a in zip(self.grounding.label(sampled, requests),
                                                       self.attention.label(sampled, requests))]

    def describe(self) -> dict:
        return {"attention": self.attention.describe()}

    def sample_settings(self) -> dict:
        return {"attention": self.attention.sample_settings()}

    def card_details(self) -> str:
        return f"the grounding module and attention maps agreeing; attention {self.attention.card_details()}"
