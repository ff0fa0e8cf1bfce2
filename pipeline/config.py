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
from stages.generate import FEATURE_LAYOUTS, SCHEDULERS
from stages.grounding.model import GroundingArchitecture
from stages.grounding.train import TrainOptions
from stages.labelers import LABELERS, Labeler, labeler_class
from stages.vocab import Vocabulary, load_vocabulary
from stages.yaml_file import read_yaml_mapping
from testbed.world.spec import WorldSpec

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
    batch_size: int = Field(gt=0, description="Training batch (oracle samples, or annotated images, per batch).")
    checkpoint_every: int = Field(0, ge=0, description="Optimizer steps between resumable checkpoints "
                                  "(OUT/grounding-resume/); 0: none.")
    validate_every: int = Field(0, ge=0, description="Optimizer steps between validations (mIoU on the held-out "
                                "samples); the last step always validates.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of the oracle samples held out (by key) "
                                "for validation.")


class Guidance(BaseModel):
    """Classifier-free guidance scale per phase (each field's description says which); a single number sets
    both."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    oracle: float = Field(5.0, description="Guidance scale of phase A (the oracle's training images; the "
                          "official code: 5.0).")
    label: float = Field(7.5, description="Guidance scale of phase C and Protocol I (the official test script: "
                         "7.5).")

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
    sd: str = Field(description="Stable Diffusion: a hub id, a local diffusers folder, tiny (built locally with "
                    "random weights) or world (the miniature world); --sd-path overrides it.")
    image_size: int = Field(gt=0, description="Generated image side in pixels; every UNet resolution must divide "
                            "its latent.")
    scheduler: Literal[tuple(SCHEDULERS)] = Field(
        "ddim", description="The sampler: ddim (eta 0, the paper's), dpmsolver++ (DPM-Solver++ 2M) or unipc (UniPC "
        "bh2), diffusers' solvers; each calls the UNet once per step (docs/configs.md#schedulers).")
    steps: int = Field(gt=0, description="Sampling steps of the scheduler (UNet calls per image).")
    guidance: Guidance = Field(Guidance(), description="Classifier-free guidance scale per phase; one number sets "
                               "both.")
    capture_step: int = Field(gt=0, description="The sampling step, counted from the end (1 = the last UNet call: "
                              "t = 1 for ddim, t ~ 1000/steps for dpmsolver++ and unipc), whose latent phase A "
                              "stores and whose UNet features the grounding module reads; within steps.")
    features: Literal[FEATURE_LAYOUTS] = Field(
        "official", description="The UNet outputs the grounding module reads: official = the 25 blocks of the "
        "official code (12 encoder blocks incl. conv_in and the downsamplers, the middle block, 12 decoder "
        "blocks); blocks = the 9 down/mid/up block outputs.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="dtype of the UNet, VAE, text encoder and grounding module; auto: float16 on a GPU "
        "(CUDA, MPS), float32 on a CPU; --dtype overrides it.")
    oracle_backend: Literal["torchvision", "detectron2"] = Field(
        "torchvision", description="The oracle's detector library: torchvision's Mask R-CNN, or detectron2's "
        "(docs/oracle.md).")
    oracle_config: str | None = Field(None, validate_default=True, description="detectron2 only (and required "
                                      "there): a model-zoo config name or a .yaml / LazyConfig .py file.")
    oracle_weights: str = Field(description="The oracle's checkpoint. torchvision: COCO_V1, tiny, world or a "
                                ".pth/.safetensors state dict; detectron2: a .pkl/.pth checkpoint. "
                                "--oracle-weights overrides it.")
    oracle_score_threshold: float = Field(ge=0, le=1, description="The oracle's mask of a class is its "
                                          "top-scoring instance of that class with at least this score.")
    oracle_input_size: Literal["auto"] | PositiveInt = Field(
        "auto", description="Short side the detector resizes its input to. auto: 800 (COCO's scale) on a GPU, the "
        "image size on a CPU; for detectron2 the size its config tests at.")
    min_mask_fraction: float = Field(0.001, ge=0, lt=1, description="Phase C filters a sample (missing_mask) "
                                     "where a prompted class has no mask (from either labeler) or one covering less "
                                     "of the image than this, instead of writing that object as background.")
    grounding: GroundingArchitecture = Field(GroundingArchitecture(), description="The grounding module's sizes; "
                                             "the defaults are the paper's.")
    attention: AttentionSettings = Field(AttentionSettings(), description="The attention labeler "
                                         "(--labeler attention); the defaults are DAAM's.")
    train: TrainSettings = Field(description="Training of the grounding module (phase B, train-annotated).")
    bootstrap_n: int = Field(gt=0, description="Oracle-labelled samples generated in phase A (seen classes "
                             "only); --bootstrap-n overrides it.")
    batch_size: int = Field(gt=0, description="Generation batch (images sampled together); --batch-size "
                            "overrides it.")
    shard_size: int = Field(gt=0, description="Samples per shard; --shard-size (or --shard-mb) overrides it.")
    world: dict[str, Any] | None = Field(None, description="The testbed's miniature world that `sd: world` and "
                                         "`oracle_weights: world` are built from (datagen world build): its sizes, "
                                         "checked by testbed.world.spec.WorldSpec; no part of a real run.")

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
            raise ValueError(f"capture_step {self.capture_step} is beyond the {self.steps} steps (it counts "
                             "sampling steps from the end: 1 is the last)")
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
    vocab: str = Field(description="Vocabulary: voc, voc-split1, coco, shapes, or a YAML file (--vocab).")
    out: OutputLocation = Field(description="Output folder or object-store URL (--out).")
    preset_name: str = Field(description="The model preset's name or file (--models).")
    preset: Preset
    seed: int = Field(0, description="Run seed: each sample's prompt and noise follow from (seed, phase, index).")
    n: int = Field(gt=0, description="Samples in the labelled dataset (phase C); may grow on a rerun.")
    labeler: str = Field("grounding", description="What labels phase C (stages.labelers): grounding (the trained "
                         "grounding module), attention (cross-attention maps; skips phases A and B) or consensus "
                         "(where both agree; the rest is ignored, 255).")
    pair_fraction: float = Field(0.5, ge=0, le=1, description="Fraction of prompts that name two classes instead "
                                 "of one.")
    image_format: Literal["jpg", "png"] = Field("jpg", description="How the images are stored in the shards.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    compile: bool = Field(False, description="torch.compile the UNet (its first batches compile): the same "
                          "computation, not in the fingerprint.")
    cache_dir: Path = Field(default_factory=lambda: default_cache_dir(), description="Where built models (tiny, "
                            "the world) and locks live: $DATAGEN_CACHE or ~/.cache/datagen.")

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
        preset = Preset(**raw)
    except ValidationError as err:
        raise one_line(err, lambda where: f"model preset '{name_or_path}': {where}") from err
    if preset.world is None:
        return preset
    try:  # the testbed's section: checked on loading as the rest is, its defaults filled in (they are the world's)
        world = WorldSpec(**preset.world)
    except ValidationError as err:
        raise one_line(err, lambda where: f"model preset '{name_or_path}': world.{where}") from err
    return preset.model_copy(update={"world": world.model_dump(mode="json")})
