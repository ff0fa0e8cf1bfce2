"""ZS3 evaluation settings: the segmenter preset (configs/segmenter/*.yaml) and its errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.config import ConfigError, config_file, one_line
from stages.segmenter import ARCHITECTURES, check_architecture
from stages.yaml_file import read_yaml_mapping


class SegmenterPreset(BaseModel):
    """The segmenter and its training recipe."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    architecture: Literal[tuple(ARCHITECTURES)]  # type: ignore[valid-type]  # stages.segmenter's registry
    backbone_weights: str | None
    aux_loss: bool
    class_balance: float = Field(0.0, ge=0, le=1, description=(
        "Class-balanced loss: each class's pixels weigh (median class frequency / its frequency) ** "
        "class_balance, frequencies counted over the training labels seen so far; 0 is plain cross-entropy, "
        "1 median-frequency balancing, which lifts small objects against background"))
    base_size: int = Field(gt=0)
    scale_range: tuple[float, float]
    crop_size: int = Field(gt=0)
    batch_size: int = Field(ge=2)
    steps: int = Field(gt=0)
    lr: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    workers: int = Field(ge=0)
    shuffle_buffer: int = Field(ge=0)
    checkpoint_every: int = Field(gt=0)

    @model_validator(mode="after")
    def _fits_architecture(self) -> SegmenterPreset:
        check_architecture(self.architecture, self.backbone_weights, self.aux_loss)
        return self


def load_segmenter_preset(name_or_path: str, overrides: dict | None = None) -> SegmenterPreset:
    """A packaged preset (tiny, standard) or a YAML file, with non-None ``overrides`` applied."""
    raw = read_yaml_mapping(config_file("segmenter", name_or_path, "segmenter preset"), "segmenter preset",
                            ConfigError)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return SegmenterPreset(**raw)
    except ValidationError as err:
        raise one_line(err, lambda where: f"segmenter preset '{name_or_path}': {where}") from err
