"""The attention labeler: class masks from the UNet's own cross-attention, recorded while it samples.

No detector and no training: each prompted class's map is the cross-attention of its tokens (averaged
over heads, the chosen layers and the chosen steps), optionally propagated through self-attention,
upsampled to the image, normalised and thresholded (``AttentionSettings`` names the published methods).
"""

from __future__ import annotations

import json

import torch

from stages.attention.maps import attention_masks, class_maps, class_token_positions
from stages.attention.record import AttentionLayer, AttentionRecorder, AttentionRecordingError, attention_layers
from stages.attention.settings import AttentionSettings
from stages.generate import Diffusion, Generation
from stages.label import SampleLabels
from stages.labelers.base import Labeler, LabelerModels, Request, Sampled
from stages.prompts import PromptSpec


def _resolutions(layers: list[AttentionLayer]) -> list[int]:
    return sorted({layer.resolution for layer in layers}, reverse=True)


def _levels(layers: list[AttentionLayer]) -> str:
    """The levels of ``layers`` with their sides, e.g. ``[1 (8x8), 2 (4x4)]``."""
    found = sorted({(layer.level, layer.resolution) for layer in layers})
    return "[" + ", ".join(f"{level} ({side}x{side})" for level, side in found) + "]" if found else "no level"


class AttentionLabeler(Labeler):
    """Records attention while ``diffusion`` samples and turns it into class masks; raises
    ``AttentionRecordingError`` at construction when the settings name layers the UNet lacks."""

    name = "attention"
    trained = False
    settings_keys = ("attention",)
    card_opening = """Synthetic semantic segmentation data made by datagen's attention labeler: Stable Diffusion
images, labelled by the UNet's own cross-attention maps of each class's prompt tokens, recorded while
it sampled the image (no detector, no training; the settings and their published sources are in
`stages/attention/settings.py`)."""

    def __init__(self, diffusion: Diffusion, settings: AttentionSettings):
        self.diffusion, self.settings = diffusion, settings
        every = [layer for layer in attention_layers(diffusion.pipe.unet) if layer.part in settings.blocks]
        cross = [layer for layer in every if layer.cross]
        self.cross_layers = [layer for layer in cross if settings.levels is None or layer.level in settings.levels]
        if not self.cross_layers:
            raise AttentionRecordingError(
                f"attention.levels {list(settings.levels or [])} in blocks {list(settings.blocks)}: this UNet has "
                f"cross-attention there at levels {_levels(cross)}")
        self.self_layers = []
        if settings.refine:
            own = [layer for layer in every if not layer.cross]
            self.self_layers = [layer for layer in own if layer.level == settings.refine.level]
            if not self.self_layers:
                raise AttentionRecordingError(
                    f"attention.refine.level {settings.refine.level}: this UNet has self-attention in blocks "
                    f"{list(settings.blocks)} at levels {_levels(own)}")
        recorded = settings.recorded_steps(diffusion.steps)
        if not recorded:
            raise AttentionRecordingError(f"attention.steps {list(settings.steps)} select none of the "
                                          f"{diffusion.steps} sampling steps")
        scheduler = diffusion.solver
        scheduler.set_timesteps(diffusion.steps)
        self.timesteps = [int(scheduler.timesteps[i]) for i in recorded]
        self.recorder = self

    @classmethod
    def load(cls, models: LabelerModels) -> AttentionLabeler:
        return cls(models.diffusion, models.attention_settings)

    @classmethod
    def check(cls, models: LabelerModels) -> None:
        cls.load(models)

    @property
    def resolution(self) -> int:
        """Where the maps are combined: the refinement's resolution, else the finest recorded one."""
        return self.self_layers[0].resolution if self.self_layers else _resolutions(self.cross_layers)[0]

    def describe(self) -> dict:
        """The settings and what they select in this UNet and schedule."""
        return {"settings": self.settings.to_dict(), "timesteps": self.timesteps,
                "cross_attention_resolutions": _resolutions(self.cross_layers),
                "cross_attention_layers": [layer.name for layer in self.cross_layers],
                "self_attention_layers": [layer.name for layer in self.self_layers]}

    def generate(self, specs: list[PromptSpec], prompt_names: list[list[str]],
                 capture_features: bool = False) -> tuple[Generation, list[torch.Tensor]]:
        """Sample ``specs`` while recording; the generation and, per sample, its (K, H, W) class maps
        in [0, 1] for the K names of ``prompt_names`` (each class as its prompt writes it)."""
        positions = self._positions([s.prompt for s in specs], prompt_names)
        with self._recording(self.timesteps) as recorder:
            gen = self.diffusion.generate(specs, capture_features=capture_features)
        return gen, self._maps(recorder, positions, gen.images.shape[1])

    def invert(self, latents: torch.Tensor, timestep: int, prompts: list[str], prompt_names: list[list[str]],
               size: int, capture_features: bool) -> tuple[dict[int, torch.Tensor] | None, list[torch.Tensor]]:
        """Record the one UNet pass of ``Diffusion.features_from_latent`` on ``latents`` at ``timestep`` (the
        maps of that step, whatever ``attention.steps`` selects while sampling); its features (or None) and,
        per sample, its (K, size, size) class maps as ``generate`` gives them."""
        positions = self._positions(prompts, prompt_names)
        with self._recording([timestep]) as recorder:
            features = self.diffusion.features_from_latent(latents, timestep, prompts, capture_features)
        return features, self._maps(recorder, positions, size)

    def _recording(self, timesteps: list[int]) -> AttentionRecorder:
        return AttentionRecorder(self.diffusion.pipe.unet, self.cross_layers + self.self_layers, set(timesteps))

    def _positions(self, prompts: list[str], prompt_names: list[list[str]]) -> list[list[list[int]]]:
        """Each class's token positions in its prompt: a name the prompt lacks is refused before the UNet runs."""
        tokenizer = self.diffusion.pipe.tokenizer
        return [class_token_positions(tokenizer, p, names) for p, names in zip(prompts, prompt_names)]

    def _maps(self, recorder: AttentionRecorder, positions: list[list[list[int]]], size: int) -> list[torch.Tensor]:
        with torch.inference_mode():
            recorded = recorder.take(self.resolution)
            power = self.settings.refine.power if self.settings.refine else 1
            return [class_maps(recorded.cross[b], positions[b], size,  # on the device: masks are decided there
                               None if recorded.affinity is None else recorded.affinity[b], power)
                    for b in range(len(positions))]

    def sample_settings(self) -> dict:
        return self.settings.to_dict() | {"timesteps": self.timesteps}

    def card_details(self) -> str:
        return (f"settings `{json.dumps(self.settings.to_dict(), sort_keys=True)}`; {len(self.cross_layers)} "
                f"cross-attention and {len(self.self_layers)} self-attention layers recorded at timesteps "
                f"{self.timesteps}")

    def masks(self, maps: torch.Tensor, class_ids: list[int], names: list[str]) -> SampleLabels:
        """Disjoint class masks (and the uncertain pixels) from one sample's maps."""
        return attention_masks(maps, class_ids, names, self.settings.threshold, self.settings.uncertain)

    def label(self, sampled: Sampled, requests: list[Request]) -> list[SampleLabels]:
        return [self.masks(maps, r.class_ids, r.names) for maps, r in zip(sampled.attention_maps, requests)]
