"""The attention labeler's settings: a model preset's ``attention:`` section, each with its source.

Layers are named by their UNet level, not by their side in pixels, so one preset holds at every image size:
level k is the part of the UNet that works at 1/2**k of the latent's side (SD 1.x at 512 px, a 64x64 latent:
level 0 = 64x64, 1 = 32x32, 2 = 16x16, 3 = 8x8; at 256 px the same levels are 32, 16, 8 and 4).

- DAAM (Tang et al., ACL 2023, "What the DAAM"; public code castorini/daam): a word's cross-attention
  maps summed over heads, every layer and every sampling step, each upsampled to one size,
  normalised to [0, 1] and binarised at 0.4. Here: ``levels: null``, ``steps: [0, 1]``,
  ``threshold: 0.4``.
- Dataset Diffusion (Nguyen et al., NeurIPS 2023; public code VinAIResearch/Dataset-Diffusion): the
  cross-attention at 16x16 only, averaged over all steps, propagated through the 32x32 self-attention
  matrix raised to the 4th power, min-max normalised per class, threshold 0.6, and pixels whose best
  class scores in [0.5, 0.6) ignored (255). Here (16 and 32 at 512 px): ``levels: [2]``, ``refine: {level: 1,
  power: 4}``, ``threshold: 0.6``, ``uncertain: 0.5`` (the sd15 preset's defaults). DiffSegmenter
  (Wang et al., 2023) refines cross-attention with self-attention in the same way.
- DiffuMask (Wu et al., ICCV 2023) averages cross-attention over resolutions and steps and picks the
  binarisation threshold per image instead of one fixed value; ``threshold: otsu`` is a training-free
  per-image, per-class choice (Otsu, 1979: the cut that maximises the between-class variance).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

BLOCKS = ("down", "mid", "up")


def _no_pixel_sides(data, old: str, new: str):
    """Refuse a setting that named layers by their side in pixels (before levels), saying what replaced it."""
    if isinstance(data, dict) and old in data:
        raise ValueError(f"{old} (a side in pixels, which changes with the image size) was replaced by {new}: "
                         "the UNet level, k = 1/2**k of the latent's side (at 512 px 0 = 64, 1 = 32, 2 = 16)")
    return data


class SelfAttentionRefinement(BaseModel):
    """Propagate the class maps through the self-attention matrix ``A`` (rows: query pixels) of the layers at
    ``level``, averaged like the cross-attention: ``A**power @ map`` (Dataset Diffusion: level 1, power 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    level: NonNegativeInt = Field(description="UNet level of the self-attention layers whose matrix propagates the "
                                  "class maps: k works at 1/2**k of the latent's side (Dataset Diffusion: 1, 32x32 "
                                  "at 512 px).")
    power: PositiveInt = Field(4, description="The power the self-attention matrix is raised to (Dataset "
                               "Diffusion: 4).")

    @model_validator(mode="before")
    @classmethod
    def _level_not_side(cls, data):
        return _no_pixel_sides(data, "resolution", "level")


class AttentionSettings(BaseModel):
    """How the attention labeler turns cross-attention into masks (see the module docstring for sources);
    the defaults are DAAM's."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    levels: tuple[NonNegativeInt, ...] | None = Field(
        None, description="UNet levels of the recorded cross-attention layers: k works at 1/2**k of the latent's "
        "side (SD 1.x at 512 px: 0 = 64x64, 1 = 32, 2 = 16, 3 = 8; Dataset Diffusion's code records 16x16, "
        "level 2); null: all of them (DAAM).")
    blocks: tuple[Literal[BLOCKS], ...] = Field(BLOCKS, description="Which UNet parts' layers are recorded: "
                                                "down, mid, up.")
    steps: tuple[float, float] = Field(
        (0.0, 1.0), description="The recorded part of the sampling run as [start, end] fractions: step i of N "
        "(0 = the noisiest) is recorded when start * N <= i < end * N; [0, 1]: every step (DAAM, Dataset "
        "Diffusion).")
    threshold: float | Literal["otsu"] = Field(
        0.4, description="A class's pixels: its normalised map above this and above the other classes' (Dataset "
        "Diffusion 0.6, DAAM 0.4); otsu: a threshold per image and class (Otsu 1979; DiffuMask also picks its "
        "threshold per image).")
    uncertain: float | None = Field(
        None, description="Pixels whose best class scores in [uncertain, threshold) are written as 255, ignored "
        "by training jobs (Dataset Diffusion's uncertainty band: 0.5); null: none.")
    refine: SelfAttentionRefinement | None = Field(
        None, description="Propagate the class maps through a self-attention matrix (Dataset Diffusion, "
        "DiffSegmenter); null: none (DAAM).")

    @model_validator(mode="before")
    @classmethod
    def _levels_not_sides(cls, data):
        return _no_pixel_sides(data, "resolutions", "levels")

    @model_validator(mode="after")
    def _consistent(self) -> AttentionSettings:
        start, end = self.steps
        if not 0 <= start < end <= 1:
            raise ValueError(f"steps must be [start, end] with 0 <= start < end <= 1, not {list(self.steps)}")
        if not self.blocks:
            raise ValueError(f"blocks must name at least one of {list(BLOCKS)}")
        if self.levels is not None and not self.levels:
            raise ValueError("levels must list at least one UNet level, or be null for all")
        if self.threshold != "otsu" and not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be otsu or within (0, 1), not {self.threshold}")
        if self.uncertain is not None and (self.threshold == "otsu" or not 0 < self.uncertain < self.threshold):
            raise ValueError("uncertain needs a numeric threshold and must be within (0, threshold)")
        return self

    def recorded_steps(self, steps: int) -> list[int]:
        """The indices (0 = first, noisiest) of the sampling steps recorded out of ``steps``."""
        start, end = self.steps
        return [i for i in range(steps) if start * steps <= i < end * steps]

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

