"""What a labeler is: the contract phase C, Protocol I, the manifest and the card rely on.

A labeler turns one sampling pass of Stable Diffusion into class masks for the classes each prompt
names. It says what it needs recorded while the UNet samples (the features at the capture step, the
cross-attention maps), whether it labels with the grounding checkpoint that phases A and B train, and
which preset settings it reads (the others do not change its labels, so they stay out of a dataset's
fingerprint). Labelers are chosen by name from ``stages.labelers.LABELERS``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from stages.attention.settings import AttentionSettings
from stages.generate import Diffusion, Generation
from stages.grounding.model import ClassTextEncoder, GroundingModule
from stages.label import SampleLabels
from stages.prompts import PromptSpec
from stages.vocab import Vocabulary


class LabelerModels(Protocol):
    """The models a labeler is built from, loaded on first use (``pipeline.runtime.Runtime``)."""

    device: str
    diffusion: Diffusion
    class_text: ClassTextEncoder
    grounding: GroundingModule  # the trained checkpoint: only labelers with ``trained`` touch it
    attention_settings: AttentionSettings
    text_template: str  # the vocabulary's "a photograph of a {}" for class embeddings


@dataclass
class Sampled:
    """One sampling pass as the labelers of a batch asked for it."""

    generation: Generation
    attention_maps: list[torch.Tensor] | None  # per sample, (K, H, W) in [0, 1]; None when none recorded


@dataclass
class Request:
    """The classes one sample is labelled for: vocabulary names, mask values, names as the prompt writes them."""

    names: list[str]
    class_ids: list[int]
    prompt_names: list[str]

    @classmethod
    def of(cls, spec: PromptSpec, vocab: Vocabulary) -> Request:
        names = list(spec.classes)
        return cls(names, [vocab[n].id for n in names], [vocab[n].prompt_name for n in names])


class Labeler(ABC):
    """One way to label generated images. Subclasses set the class attributes and implement ``load`` and
    ``label``; ``describe``, ``sample_settings`` and the card text say what labelled a dataset."""

    name: ClassVar[str]
    trained: ClassVar[bool]  # labels with the grounding checkpoint: phases A and B run before phase C
    settings_keys: ClassVar[tuple[str, ...]]  # the preset sections it reads to label (beyond phases A and B's)
    card_opening: ClassVar[str]  # the dataset card's first paragraph
    needs_features: bool = False  # the UNet's features at the capture step
    recorder = None  # the AttentionLabeler whose maps it reads, if any

    @classmethod
    @abstractmethod
    def load(cls, models: LabelerModels) -> Labeler:
        """The labeler on ``models``; raises ``DatagenError`` when its settings do not fit them."""

    @classmethod
    def check(cls, models: LabelerModels) -> None:
        """Before any work: refuse settings that do not fit the models, without needing a checkpoint."""

    @abstractmethod
    def label(self, sampled: Sampled, requests: list[Request]) -> list[SampleLabels]:
        """Each sample's disjoint class masks (and pixels to ignore) for the classes of its request."""

    def describe(self) -> dict | None:
        """What labelled a dataset beyond the checkpoint (settings, recorded layers): the manifest's and
        Protocol I's ``details``."""
        return None

    def sample_settings(self) -> dict | None:
        """Settings written into every sample's json (``labeler_settings``), or None."""
        return None

    def card_details(self) -> str:
        """What the dataset card says of the labeler after its name."""
        return ""

    def provenance(self) -> dict:
        """What a dataset's manifest keeps of the labeler that labelled it (its ``labels``), the card's text
        included, so that reading a dataset needs no labeler code."""
        details = self.describe()
        return {"labeler": self.name, "trained": self.trained, **({"details": details} if details is not None else {}),
                "card": {"opening": self.card_opening, "details": self.card_details()}}


def sample(diffusion: Diffusion, labelers: list[Labeler], specs: list[PromptSpec],
           prompt_names: list[list[str]]) -> Sampled:
    """One sampling pass that records what every labeler of ``labelers`` reads, so several label the same images."""
    features = any(labeler.needs_features for labeler in labelers)
    recorder = next((labeler.recorder for labeler in labelers if labeler.recorder is not None), None)
    if recorder is None:
        return Sampled(diffusion.generate(specs, capture_features=features), None)
    generation, maps = recorder.generate(specs, prompt_names, capture_features=features)
    return Sampled(generation, maps)


def invert(diffusion: Diffusion, labelers: list[Labeler], images: np.ndarray, latents: torch.Tensor, timestep: int,
           prompts: list[str], prompt_names: list[list[str]]) -> Sampled:
    """What ``sample`` gives the labelers, for images that were not sampled (annotated ones): ``latents`` is
    their x_t at ``timestep`` (``Diffusion.latents_from_images``), and one UNet pass there records what every
    labeler reads, through the same capture and recorder as sampling."""
    features = any(labeler.needs_features for labeler in labelers)
    recorder = next((labeler.recorder for labeler in labelers if labeler.recorder is not None), None)
    if recorder is None:
        captured, maps = diffusion.features_from_latent(latents, timestep, prompts, features), None
    else:
        captured, maps = recorder.invert(latents, timestep, prompts, prompt_names, images.shape[1], features)
    # where generation checks its final latents, one pass has only what it recorded to go wrong
    finite = np.ones(len(images), bool)
    for tensor in (captured or {}).values():
        finite &= torch.isfinite(tensor).flatten(1).all(1).cpu().numpy()
    if maps is not None:
        finite &= np.array([bool(torch.isfinite(m).all()) for m in maps])
    return Sampled(Generation(images=images, latents=latents.float().cpu(), timestep=timestep, features=captured,
                              finite=finite), maps)
