"""Run configuration: a model preset (configs/presets/*.yaml) plus the user's flags, validated."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.functional_serializers import PlainSerializer

from pipeline.dataset.location import location
from stages.attention.settings import AttentionSettings
from stages.errors import ConfigError
from stages.generate import FEATURE_LAYOUTS
from stages.grounding.model import GroundingArchitecture
from stages.grounding.train import TrainOptions
from stages.labelers import LABELERS, Labeler, labeler_class
from stages.vocab import Vocabulary, load_vocabulary
from stages.yaml_file import read_yaml_mapping

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# The preset settings of phases A and B (the oracle, the training): they change only the labels of labelers
# that label with the trained checkpoint (``Labeler.trained``).
TRAINING_KEYS = ("oracle_backend", "oracle_config", "oracle_weights", "oracle_score_threshold", "oracle_input_size",
                 "grounding", "train", "bootstrap_n")


def one_line(err: ValidationError, name: Callable[[str], str]) -> ConfigError:
    """The first problem pydantic found, as one line: ``name(location)``, then what is wrong. The
    location joins the field path with dots (``train.steps``); ``name`` turns it into what the user
    typed (a flag, a file's key)."""
    first = err.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{name('.'.join(str(p) for p in first['loc'])).rstrip(': ')}: {message}")


class TrainSettings(TrainOptions):
    """The trainer's options plus what the training jobs feed it (``stages.grounding.train.TrainOptions``)."""

    model_config = ConfigDict(allow_inf_nan=False)
    batch_size: int = Field(gt=0)
    checkpoint_every: int = Field(0, ge=0)  # steps between resumable checkpoints; 0 = none
    validate_every: int = Field(0, ge=0)  # steps between validations; the last step always validates
    val_fraction: float = Field(0.1, ge=0, lt=1)  # oracle samples held out (by key) for validation


class Guidance(BaseModel):
    """Classifier-free guidance scale per phase. The official code generated its training images at
    5.0 and tests at 7.5: phase A's oracle data uses ``oracle``; phase C and Protocol I use ``label``.
    A single number sets both."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    oracle: float = 5.0
    label: float = 7.5

    @model_validator(mode="before")
    @classmethod
    def _one_number_for_both(cls, value):
        return {"oracle": value, "label": value} if isinstance(value, int | float) else value


class Preset(BaseModel):
    """Models and their sizes; everything a preset file sets. Checked whole on loading (no NaN or
    infinity, a capture step within the steps, attention steps that select one of them);
    ``pipeline.runtime.Runtime.check_preset`` checks the sizes against the models once they are loaded,
    before any output is written."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sd: str
    image_size: int = Field(gt=0)
    steps: int = Field(gt=0)
    guidance: Guidance = Guidance()
    capture_step: int = Field(gt=0)
    features: Literal[FEATURE_LAYOUTS] = "official"  # which UNet outputs the grounding module reads
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # of the UNet, VAE, text encoder and
    #   grounding module; auto: float16 on a GPU (CUDA, MPS), float32 on a CPU
    oracle_backend: Literal["torchvision", "detectron2"] = "torchvision"  # the oracle's detector library
    oracle_config: str | None = Field(None, validate_default=True)  # detectron2 only: a model-zoo config
    #   name or a .yaml / LazyConfig .py file
    oracle_weights: str  # torchvision: COCO_V1, tiny, world or a .pth/.safetensors state dict; detectron2: .pkl/.pth
    oracle_score_threshold: float = Field(ge=0, le=1)  # the top instance per class must score this much
    oracle_input_size: Literal["auto"] | PositiveInt = "auto"  # auto: 800 (COCO's scale) on a GPU,
    #   the image size on a CPU (detectron2: its config's test size); the detector resizes its input to this short side
    min_mask_fraction: float = Field(0.001, ge=0, lt=1)  # phase C: a prompted class whose mask covers
    #   less of the image filters the sample ("missing_mask"): it would be written as background
    grounding: GroundingArchitecture = GroundingArchitecture()
    attention: AttentionSettings = AttentionSettings()  # the attention labeler (stages/attention/settings.py)
    train: TrainSettings
    bootstrap_n: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    shard_size: int = Field(gt=0)
    world: dict[str, Any] | None = None  # the testbed's miniature world, which `sd: world` / `oracle_weights: world`
    #   are built from (datagen world build): its sizes, checked by testbed.world.spec.WorldSpec where those
    #   are resolved (pipeline.local_sources); opaque here, as the world is no part of a real run

    @field_validator("oracle_config")
    @classmethod
    def _config_for_detectron2(cls, config: str | None, info: ValidationInfo) -> str | None:
        backend = info.data.get("oracle_backend")
        if backend == "torchvision" and config is not None:
            raise ValueError("a detectron2 config: set oracle_backend: detectron2, or remove it")
        if backend == "detectron2" and config is None:
            raise ValueError("oracle_backend detectron2 needs one: a model-zoo config name (e.g. "
                             "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml) or a .yaml / .py file")
        return config

    @field_validator("oracle_weights")
    @classmethod
    def _checkpoint_for_detectron2(cls, weights: str, info: ValidationInfo) -> str:
        if info.data.get("oracle_backend") == "detectron2" and Path(weights).suffix not in (".pkl", ".pth"):
            raise ValueError(f"'{weights}': the detectron2 backend takes a .pkl or .pth checkpoint")
        return weights

    @model_validator(mode="after")
    def _steps_within_the_run(self) -> Preset:
        if self.capture_step > self.steps:
            raise ValueError(f"capture_step {self.capture_step} is beyond the {self.steps} steps (it counts DDIM "
                             "steps from the end: 1 is the last)")
        if not self.attention.recorded_steps(self.steps):
            raise ValueError(f"attention.steps {list(self.attention.steps)} select none of the {self.steps} "
                             "sampling steps")
        return self


def default_cache_dir() -> Path:
    """Where built models live (the tiny preset, the world): $DATAGEN_CACHE or ~/.cache/datagen."""
    return Path(os.environ.get("DATAGEN_CACHE", "~/.cache/datagen")).expanduser()


# A local folder (Path) or an object-store prefix (UPath from an fsspec URL): ``pipeline.dataset.location``.
OutputLocation = Annotated[Any, BeforeValidator(location), PlainSerializer(str, when_used="json")]


class RunConfig(BaseModel):
    """A whole run. ``fingerprint`` covers every field that changes the samples."""

    model_config = ConfigDict(extra="forbid")
    vocab: str
    out: OutputLocation
    preset_name: str
    preset: Preset
    seed: int = 0
    n: int = Field(gt=0)
    labeler: str = "grounding"  # what labels phase C (stages.labelers); one that needs no training skips phases A and B
    pair_fraction: float = Field(0.5, ge=0, le=1)
    image_format: Literal["jpg", "png"] = "jpg"
    device: str = "auto"
    compile: bool = False  # torch.compile the UNet (first batches compile): same computation, not in the fingerprint
    cache_dir: Path = Field(default_factory=lambda: default_cache_dir())

    @field_validator("labeler")
    @classmethod
    def _known_labeler(cls, name: str) -> str:
        if name not in LABELERS:
            raise ValueError(f"'{name}' is not one of {', '.join(LABELERS)}")
        return name

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ValueError(f"'{device}' is not auto, cpu, cuda, cuda:N or mps")
        return device

    def vocabulary(self) -> Vocabulary:
        return resolve_vocabulary(self.vocab)

    def labeler_class(self) -> type[Labeler]:
        return labeler_class(self.labeler)

    def fingerprint(self) -> str:
        """Identity of the dataset: all but n, out, device, compile and cache (n may grow on a rerun), and but
        the preset settings that do not change its labeler's labels (other labelers' sections; phases A
        and B's for a labeler that needs no training)."""
        labeler = self.labeler_class()
        unused = {key for other in LABELERS.values() for key in other.settings_keys} - set(labeler.settings_keys)
        preset: dict = dict.fromkeys(unused, True)
        if not labeler.trained:
            preset |= dict.fromkeys(TRAINING_KEYS, True) | {"guidance": {"oracle": True}}
        fields = self.model_dump(mode="json", exclude={"n": True, "out": True, "device": True, "compile": True,
                                                       "cache_dir": True, "preset": preset})
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
    raw = read_yaml_mapping(config_file("presets", name_or_path, "model preset"), "model preset", ConfigError)
    for key, value in (overrides or {}).items():  # nested dicts (e.g. train) are merged, None skipped
        if isinstance(value, dict):
            if not isinstance(raw.get(key, {}), dict):
                continue  # the preset's own value is wrong: validation names it
            value = {**raw.get(key, {}), **{k: v for k, v in value.items() if v is not None}}
        if value is not None:
            raw[key] = value
    try:
        return Preset(**raw)
    except ValidationError as err:
        raise one_line(err, lambda where: f"model preset '{name_or_path}': {where}") from err
