"""Models for a run, loaded lazily and once per process (a worker reuses them for every shard)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch
from pydantic import ValidationError

from pipeline.config import ConfigError, RunConfig, one_line
from pipeline.dataset.checkpoint import grounding_installed
from pipeline.dataset.layout import GROUNDING_DIR
from pipeline.dataset.location import local_copy
from pipeline.local_sources import LOCAL_SOURCES
from stages.attention.settings import AttentionSettings
from stages.generate import Diffusion
from stages.grounding.model import ClassTextEncoder, GroundingConfig, GroundingModule, load_grounding
from stages.labelers import Labeler, labeler_class
from stages.models import MASKRCNN_FILE, fast_path, load_stable_diffusion
from stages.oracle import COCO_INPUT_SIZE, Oracle, import_detectron2_backend, load_oracle
from stages.weights import WeightsMissingError


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
    """The models of a run (``stages.labelers.LabelerModels`` for its labelers), each loaded on first use."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.preset = config.preset
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(self.preset.dtype, self.device)
        self._built_folders: dict[str, Path] = {}

    def _built(self, name: str) -> Path | None:
        """The cache folder of a source built here (``tiny``, ``world``: ``pipeline.local_sources``), found
        once; None for any other source."""
        if name in LOCAL_SOURCES and name not in self._built_folders:
            self._built_folders[name] = LOCAL_SOURCES[name](self.config)
        return self._built_folders.get(name)

    def sd_source(self) -> str:
        return str(self._built(self.preset.sd) or self.preset.sd)

    def oracle_source(self) -> str:
        folder = self._built(self.preset.oracle_weights)
        return str(folder / MASKRCNN_FILE) if folder else self.preset.oracle_weights

    @cached_property
    def pipe(self):
        """The SD pipeline, sampling at the preset's ``image_size``: a loaded UNet's ``sample_size`` is the size
        it was trained at (SD 1.5: 64 latents, 512 px), which the noise, the attention levels and phase B's
        feature shapes read."""
        pipe = load_stable_diffusion(self.sd_source(), self.device, self.dtype)
        pipe.unet.register_to_config(sample_size=self.preset.image_size // pipe.vae_scale_factor)
        return fast_path(pipe, self.device, self.config.compile)

    @cached_property
    def diffusion(self) -> Diffusion:
        p = self.preset
        return Diffusion(self.pipe, steps=p.steps, guidance=p.guidance.label, capture_step=p.capture_step,
                         features=p.features, scheduler=p.scheduler)

    @property
    def attention_settings(self) -> AttentionSettings:
        return self.preset.attention

    @cached_property
    def text_template(self) -> str:
        return self.config.vocabulary().text_template

    def labelers(self, names: tuple[str, ...]) -> list[Labeler]:
        """Labelers by name on these models (Protocol I scores several on one sampling pass)."""
        return [labeler_class(name).load(self) for name in names]

    @cached_property
    def oracle(self) -> Oracle:
        p = self.preset
        return load_oracle(p.oracle_backend, self.oracle_source(), self.config.vocabulary(), config=p.oracle_config,
                           input_size=self.oracle_input_size, score_threshold=p.oracle_score_threshold,
                           device=self.device)

    @property
    def oracle_input_size(self) -> int | None:
        """The detector's input size: the preset's, or on ``auto`` for torchvision COCO's 800 on a GPU (where
        Mask R-CNN was trained and small objects survive) and the image size on a CPU (cheaper); for
        detectron2 None, the size its config tests at."""
        size = self.preset.oracle_input_size
        if size != "auto":
            return size
        if self.preset.oracle_backend == "detectron2":
            return None
        return COCO_INPUT_SIZE if self.device.startswith("cuda") else self.preset.image_size

    def check_preset(self, grounding: bool = True) -> None:
        """The preset's image size and (``grounding``) grounding sizes against the loaded models: every UNet
        resolution whole (image_size a multiple of the VAE's and the UNet's downsampling), one
        ``reduce_channels`` entry per resolution, a patch size dividing the finest. Refused here, not in
        phase B after phase A's work."""
        p, name = self.preset, self.config.preset_name
        factor, levels = self.pipe.vae_scale_factor, len(self.pipe.unet.config.block_out_channels)
        multiple = factor * 2 ** (levels - 1)
        if p.image_size % multiple:
            raise ConfigError(f"model preset '{name}': image_size {p.image_size} is not a multiple of {multiple} (the "
                              f"VAE downsamples {factor}x, the UNet {levels - 1} times more by 2), e.g. "
                              f"{max(1, round(p.image_size / multiple)) * multiple}")
        if not grounding:
            return
        resolutions = {p.image_size // factor >> k: 1 for k in range(levels)}
        try:
            GroundingConfig(feature_channels=resolutions, text_dim=1, image_size=p.image_size,
                            **p.grounding.model_dump())
        except ValidationError as err:
            raise one_line(err, lambda _: f"model preset '{name}': grounding") from err

    @cached_property
    def class_text(self) -> ClassTextEncoder:
        return ClassTextEncoder(self.pipe.text_encoder, self.pipe.tokenizer)

    @cached_property
    def grounding(self) -> GroundingModule:
        with local_copy(self.config.out / GROUNDING_DIR) as folder:  # an object store's: downloaded first
            return load_grounding(folder, map_location=self.device).to(self.dtype).eval()

    def check_weights(self, oracle: bool, grounding: bool, labelers: tuple[type[Labeler], ...] = ()) -> None:
        """Fail fast, before any work, when weights are missing (WeightsMissingError; ``grounding``: the
        checkpoint in OUT), the oracle's backend is not installed (OracleBackendError, before any model
        loads; only when the oracle is used), the preset's sizes do not fit the models (ConfigError,
        ``check_preset``; the grounding sizes unless only labelers that need no training are used) or a
        labeler's settings do not fit them (its ``check``)."""
        if oracle and self.preset.oracle_backend == "detectron2":
            import_detectron2_backend()
        self.pipe
        self.check_preset(grounding=grounding or not labelers or any(c.trained for c in labelers))
        for labeler in labelers:
            labeler.check(self)
        if oracle:
            self.oracle
        if grounding and not grounding_installed(self.config.out):
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
