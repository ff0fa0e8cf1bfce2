"""The attention labeler's settings: a model preset's ``attention:`` section, each with its source.

- DAAM (Tang et al., ACL 2023, "What the DAAM"; public code castorini/daam): a word's cross-attention
  maps summed over heads, every layer and every sampling step, each upsampled to one size,
  normalised to [0, 1] and binarised at 0.4. Here: ``resolutions: null``, ``steps: [0, 1]``,
  ``threshold: 0.4``.
- Dataset Diffusion (Nguyen et al., NeurIPS 2023; public code VinAIResearch/Dataset-Diffusion): the
  cross-attention at 16x16 only, averaged over all steps, propagated through the 32x32 self-attention
  matrix raised to the 4th power, min-max normalised per class, threshold 0.6, and pixels whose best
  class scores in [0.5, 0.6) ignored (255). Here: ``resolutions: [16]``, ``refine: {resolution: 32,
  power: 4}``, ``threshold: 0.6``, ``uncertain: 0.5`` (the sd15 preset's defaults). DiffSegmenter
  (Wang et al., 2023) refines cross-attention with self-attention in the same way.
- DiffuMask (Wu et al., ICCV 2023) averages cross-attention over resolutions and steps and picks the
  binarisation threshold per image instead of one fixed value; ``threshold: otsu`` is a training-free
  per-image, per-class choice (Otsu, 1979: the cut that maximises the between-class variance).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator

BLOCKS = ("down", "mid", "up")


class SelfAttentionRefinement(BaseModel):
    """Propagate the class maps through the self-attention matrix ``A`` (rows: query pixels) of the layers at
    ``resolution``, averaged like the cross-attention: ``A**power @ map`` (Dataset Diffusion: 32, 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resolution: PositiveInt
    power: PositiveInt = 4


class AttentionSettings(BaseModel):
    """How the attention labeler turns cross-attention into masks (see the module docstring for sources);
    the defaults are DAAM's."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    resolutions: tuple[PositiveInt, ...] | None = None  # latent resolutions of the recorded cross-attention
    #   layers (SD 1.x at 512 px: 64, 32, 16, 8); null: all of them (DAAM)
    blocks: tuple[Literal[BLOCKS], ...] = BLOCKS  # which UNet parts' layers are recorded
    steps: tuple[float, float] = (0.0, 1.0)  # the recorded part of the sampling run, as fractions: step i
    #   of N (0 = the noisiest) is recorded when start * N <= i < end * N; [0, 1]: every step (DAAM, Dataset Diffusion)
    threshold: float | Literal["otsu"] = 0.4  # a class's pixels: its normalised map above this (and above
    #   the other classes'); otsu: a threshold per image and class
    uncertain: float | None = None  # pixels whose best class is in [uncertain, threshold): 255, not scored
    refine: SelfAttentionRefinement | None = None  # self-attention propagation (Dataset Diffusion, DiffSegmenter)

    @model_validator(mode="after")
    def _consistent(self) -> AttentionSettings:
        start, end = self.steps
        if not 0 <= start < end <= 1:
            raise ValueError(f"steps must be [start, end] with 0 <= start < end <= 1, not {list(self.steps)}")
        if not self.blocks:
            raise ValueError(f"blocks must name at least one of {list(BLOCKS)}")
        if self.resolutions is not None and not self.resolutions:
            raise ValueError("resolutions must list at least one resolution, or be null for all")
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

