"""Models for a run, loaded lazily and once per process (a worker reuses them for every shard)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset.atomic import build_folder_once
from pipeline.dataset.layout import GROUNDING_DIR
from pipeline.world import WORLD, built_world, world_spec
from stages.generate import Diffusion
from stages.grounding.model import WEIGHTS_FILE, ClassTextEncoder, GroundingModule, load_grounding
from stages.models import MASKRCNN_FILE, build_random_preset, fast_path, load_stable_diffusion, random_preset_name
from stages.oracle import COCO_INPUT_SIZE, Oracle, detector_categories, load_maskrcnn
from stages.weights import WeightsMissingError

TINY_MODEL_SEED = 0  # the tiny preset's weights are fixed, whatever the run seed


def tiny_preset_dir(cache_dir: Path, seed: int, image_size: int) -> Path:
    """The tiny preset's folder in the cache, built on first use (keyed by its content)."""
    return build_folder_once(Path(cache_dir) / random_preset_name(seed, image_size),
                             lambda folder: build_random_preset(folder, seed, image_size))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA GPUs here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple's Metal backend is not available here")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The models' dtype: the preset's, or on ``auto`` float16 on a GPU (CUDA, MPS) and float32 on a CPU."""
    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    return getattr(torch, dtype)


class Runtime:
    def __init__(self, config: RunConfig):
        self.config = config
        self.preset = config.preset
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(self.preset.dtype, self.device)

    @cached_property
    def tiny_dir(self) -> Path:
        return tiny_preset_dir(self.config.cache_dir, TINY_MODEL_SEED, self.preset.image_size)

    @cached_property
    def world_dir(self) -> Path:
        return built_world(self.config.cache_dir, world_spec(self.preset))

    def _built(self, name: str) -> Path | None:
        """The cache folder a preset's ``tiny`` or ``world`` models name; None for any other source."""
        return {"tiny": lambda: self.tiny_dir, WORLD: lambda: self.world_dir}.get(name, lambda: None)()

    def sd_source(self) -> str:
        return str(self._built(self.preset.sd) or self.preset.sd)

    def oracle_source(self) -> str:
        folder = self._built(self.preset.oracle_weights)
        return str(folder / MASKRCNN_FILE) if folder else self.preset.oracle_weights

    @cached_property
    def pipe(self):
        return fast_path(load_stable_diffusion(self.sd_source(), self.device, self.dtype), self.device,
                         self.config.compile)

    @cached_property
    def diffusion(self) -> Diffusion:
        p = self.preset
        return Diffusion(self.pipe, steps=p.steps, guidance=p.guidance.label, capture_step=p.capture_step,
                         features=p.features)

    @cached_property
    def oracle(self) -> Oracle:
        model = load_maskrcnn(self.oracle_input_size, self.oracle_source(),
                              box_score_thresh=self.preset.oracle_score_threshold).to(self.device)
        return Oracle(model, self.config.vocabulary(), score_threshold=self.preset.oracle_score_threshold,
                      device=self.device, categories=detector_categories(self.oracle_source()))

    @property
    def oracle_input_size(self) -> int:
        """The detector's input size: the preset's, or on ``auto`` COCO's 800 on a GPU (where Mask R-CNN
        was trained and small objects survive) and the image size on a CPU (4x cheaper at 512)."""
        size = self.preset.oracle_input_size
        if size != "auto":
            return size
        return COCO_INPUT_SIZE if self.device.startswith("cuda") else self.preset.image_size

    @cached_property
    def class_text(self) -> ClassTextEncoder:
        return ClassTextEncoder(self.pipe.text_encoder, self.pipe.tokenizer)

    @cached_property
    def grounding(self) -> GroundingModule:
        return load_grounding(self.config.out / GROUNDING_DIR, map_location=self.device).to(self.dtype).eval()

    def check_weights(self, oracle: bool, grounding: bool) -> None:
        """Fail fast, before any work, when weights are missing (WeightsMissingError)."""
        self.pipe
        if oracle:
            self.oracle
        if grounding and not (self.config.out / GROUNDING_DIR / WEIGHTS_FILE).exists():
            raise WeightsMissingError(f"no grounding checkpoint in {self.config.out / GROUNDING_DIR}; "
                                      "run `datagen train` (or `datagen run`) first")
        if grounding:
            try:
                self.grounding
            except Exception as err:  # noqa: BLE001 - corrupt safetensors/config raise their own types
                raise WeightsMissingError(
                    f"grounding checkpoint in {self.config.out / GROUNDING_DIR} cannot be loaded "
                    f"({type(err).__name__}: {str(err).splitlines()[0]}); delete that folder and run "
                    "`datagen train`") from err
