"""Run configuration: a model preset (configs/presets/*.yaml) plus the user's flags, validated."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from stages.errors import DatagenError
from stages.generate import FEATURE_LAYOUTS
from stages.grounding.model import GroundingArchitecture
from stages.grounding.train import TrainOptions
from stages.vocab import Vocabulary, load_vocabulary
from stages.world.spec import WorldSpec

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(DatagenError, ValueError):
    """A config or flag that cannot be used; its message is one line for the user."""


def one_line(err: ValidationError, name: Callable[[str], str]) -> ConfigError:
    """The first problem pydantic found, as one line: ``name(location)``, then what is wrong. The
    location joins the field path with dots (``train.steps``); ``name`` turns it into what the user
    typed (a flag, a file's key)."""
    first = err.errors()[0]
    return ConfigError(f"{name('.'.join(str(p) for p in first['loc']))}: {first['msg']}")


class TrainSettings(TrainOptions):
    """The trainer's options plus what the training jobs feed it (``stages.grounding.train.TrainOptions``)."""

    batch_size: int = Field(gt=0)
    checkpoint_every: int = Field(0, ge=0)  # steps between resumable checkpoints; 0 = none
    validate_every: int = Field(0, ge=0)  # steps between validations; the last step always validates
    val_fraction: float = Field(0.1, ge=0, lt=1)  # oracle samples held out (by key) for validation


class Guidance(BaseModel):
    """Classifier-free guidance scale per phase. The official code generated its training images at
    5.0 and tests at 7.5: phase A's oracle data uses ``oracle``; phase C and Protocol I use ``label``.
    A single number sets both."""

    model_config = ConfigDict(extra="forbid")
    oracle: float = 5.0
    label: float = 7.5

    @model_validator(mode="before")
    @classmethod
    def _one_number_for_both(cls, value):
        return {"oracle": value, "label": value} if isinstance(value, int | float) else value


class Preset(BaseModel):
    """Models and their sizes; everything a preset file sets."""

    model_config = ConfigDict(extra="forbid")
    sd: str
    image_size: int = Field(gt=0)
    steps: int = Field(gt=0)
    guidance: Guidance = Guidance()
    capture_step: int = Field(gt=0)
    features: Literal[FEATURE_LAYOUTS] = "official"  # which UNet outputs the grounding module reads
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # of the UNet, VAE, text encoder and
    #   grounding module; auto: float16 on a GPU (CUDA, MPS), float32 on a CPU
    oracle_weights: str
    oracle_score_threshold: float = Field(ge=0, le=1)  # the top instance per class must score this much
    oracle_input_size: Literal["auto"] | PositiveInt = "auto"  # auto: 800 (COCO's scale) on a GPU,
    #   the image size on a CPU; the detector resizes its input to this short side
    min_mask_fraction: float = Field(0.001, ge=0, lt=1)  # phase C: a prompted class whose mask covers
    #   less of the image filters the sample ("missing_mask"): it would be written as background
    grounding: GroundingArchitecture = GroundingArchitecture()
    train: TrainSettings
    bootstrap_n: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    shard_size: int = Field(gt=0)
    world: WorldSpec | None = None  # what `sd: world` / `oracle_weights: world` are built from (datagen world build)


def default_cache_dir() -> Path:
    """Where built models live (the tiny preset, the world): $DATAGEN_CACHE or ~/.cache/datagen."""
    return Path(os.environ.get("DATAGEN_CACHE", "~/.cache/datagen")).expanduser()


class RunConfig(BaseModel):
    """A whole run. ``fingerprint`` covers every field that changes the samples."""

    model_config = ConfigDict(extra="forbid")
    vocab: str
    out: Path
    preset_name: str
    preset: Preset
    seed: int = 0
    n: int = Field(gt=0)
    pair_fraction: float = Field(0.5, ge=0, le=1)
    image_format: Literal["jpg", "png"] = "jpg"
    device: str = "auto"
    compile: bool = False  # torch.compile the UNet (first batches compile): same computation, not in the fingerprint
    cache_dir: Path = Field(default_factory=lambda: default_cache_dir())

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ValueError(f"'{device}' is not auto, cpu, cuda, cuda:N or mps")
        return device

    def vocabulary(self) -> Vocabulary:
        return resolve_vocabulary(self.vocab)

    def fingerprint(self) -> str:
        """Identity of the dataset: all but n, out, device, compile and cache (n may grow on a rerun)."""
        fields = self.model_dump(mode="json", exclude={"n", "out", "device", "compile", "cache_dir"})
        fields["vocabulary"] = self.vocabulary().to_dict()
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def config_file(folder: str, name_or_path: str, what: str) -> Path:
    """A packaged ``configs/<folder>/<name>.yaml`` or a YAML file path; one clear error otherwise."""
    packaged = CONFIG_DIR / folder / f"{name_or_path}.yaml"
    path = packaged if packaged.exists() else Path(name_or_path)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml")))
        raise ConfigError(f"unknown {what} '{name_or_path}': not one of {names} and no such file")
    return path


def resolve_vocabulary(name_or_path: str) -> Vocabulary:
    """A packaged vocabulary by name (voc, voc-split1, coco) or a user's YAML file."""
    return load_vocabulary(config_file("vocab", name_or_path, "vocabulary"))


def load_preset(name_or_path: str, overrides: dict | None = None) -> Preset:
    raw = yaml.safe_load(config_file("presets", name_or_path, "model preset").read_text())
    for key, value in (overrides or {}).items():  # nested dicts (e.g. train) are merged, None skipped
        if isinstance(value, dict):
            value = {**raw.get(key, {}), **{k: v for k, v in value.items() if v is not None}}
        if value is not None:
            raw[key] = value
    try:
        return Preset(**raw)
    except ValidationError as err:
        raise one_line(err, lambda where: f"model preset '{name_or_path}': {where}") from err
