"""Options shared by several commands, and the validated settings they build.

The settings' modules (pipeline.config and what it imports: torch, diffusers) are imported in the
builders, not here, so that `datagen --help` loads no models' code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stages.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.run.executors import ExecutorSettings

Vocab = Annotated[str, typer.Option(help="Vocabulary: voc, voc-split1, coco, or a YAML file.")]
N = Annotated[int, typer.Option(help="Samples in the labelled dataset (phase C).")]
MadeN = Annotated[int | None, typer.Option(help="Samples in the labelled dataset (phase C); more than --out's "
                                                "dataset has extends it [default: as many as --out's dataset was "
                                                "made with, else 110000].", show_default=False)]
Out = Annotated[str, typer.Option(help="Output folder, or an object-store URL (s3://bucket/prefix, gs://..., "
                                       "az://...); created; a rerun resumes it.")]
Models = Annotated[str, typer.Option(help="Model preset: sd15 (real weights), tiny (offline), world (the miniature "
                                          "world), or a YAML file.")]
Seed = Annotated[int, typer.Option(help="Run seed: same config and seed give the same samples.")]
SdPath = Annotated[str | None, typer.Option(help="Stable Diffusion hub id or local diffusers folder.")]
OracleWeights = Annotated[str | None, typer.Option(help="Oracle weights: COCO_V1 or a torchvision Mask R-CNN state "
                                                       "dict (.pth/.safetensors); a detectron2 checkpoint (.pkl/.pth) "
                                                       "for oracle_backend: detectron2.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
Dtype = Annotated[str | None, typer.Option(help="Model dtype: auto (float16 on a GPU, float32 on a CPU), float32, "
                                                "float16 or bfloat16 (default: the preset's).")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the UNet (its first batches run slower "
                                                         "while it compiles).")]
BootstrapN = Annotated[int | None, typer.Option(help="Oracle samples for training (phase A).")]
TrainSteps = Annotated[int | None, typer.Option(help="Grounding training steps (phase B).")]
ShardSize = Annotated[int | None, typer.Option(help="Samples per shard.")]
ShardMb = Annotated[float | None, typer.Option(help="Target shard size in MB (sets the samples per shard from the "
                                                    "image size).")]
BatchSize = Annotated[int | None, typer.Option(help="Generation batch size.")]
Labeler = Annotated[str, typer.Option(help="What labels the dataset (part of its identity, so give it to every "
                                           "phase command): grounding (the grounding module, trained in phases A "
                                           "and B), attention (the UNet's cross-attention maps: no oracle, no "
                                           "training; phases A and B are skipped) or consensus (both; pixels "
                                           "where they disagree are ignored, 255).")]
PairFraction = Annotated[float, typer.Option(help="Fraction of prompts that name two classes instead of one.")]
ImageFormat = Annotated[str, typer.Option(help="Image encoding in the shards: jpg or png (lossless).")]
ExecutorKind = Annotated[str, typer.Option("--executor", help="local (in this process) or ray.")]
RayAddress = Annotated[str | None, typer.Option(help="Ray cluster to join (auto, ray://host:port); implies "
                                                "--executor ray. Without it, ray starts a local instance.")]
Workers = Annotated[int | None, typer.Option(help="Ray model workers (default: one per GPU, else per CPU).")]
GpusPerWorker = Annotated[float | None, typer.Option(help="GPUs per Ray model worker (default 1 with GPUs, else 0).")]
CpusPerWorker = Annotated[float, typer.Option(help="CPUs per Ray model worker.")]
EncodeCpus = Annotated[float, typer.Option(help="CPUs per Ray shard encoding/writing task (holds no GPU).")]


def made_vocab(fallback: str):
    """--vocab of a command on a dataset: by default the dataset's (``made_settings``), else ``fallback``."""
    return Annotated[str | None, typer.Option(
        "--vocab", show_default=False, help=f"Vocabulary: voc, voc-split1, coco, or a YAML file (default: the one "
                                            f"--out's dataset was made with, else {fallback}).")]


def made_models(fallback: str):
    """--models of a command on a dataset: by default the dataset's (``made_settings``), else ``fallback``."""
    return Annotated[str | None, typer.Option(
        "--models", show_default=False, help=f"Model preset: sd15 (real weights), tiny (offline), world (the "
                                             f"miniature world), or a YAML file (default: the one --out's dataset "
                                             f"was made with, else {fallback}).")]


def local_folder(flag: str, value: str, why: str) -> Path:
    """A flag that takes a local folder (or a ``file://`` URL) only; an object-store URL is one line."""
    from pipeline.dataset.location import is_remote, location

    folder = location(value)
    if is_remote(folder):
        raise ConfigError(f"{flag} {value}: a local folder, not an object store ({why}); --synthetic and the "
                          "run commands' --out take store URLs")
    return folder


def made_settings(folder: str, vocab: str | None, models: str | None, defaults: tuple[str, str],
                  flag: str = "--out") -> tuple[str, str]:
    """--vocab and --models for a command on the dataset in ``folder``: the ones it was made with where the
    flags are not given (``defaults`` where it holds none); a flag that names another is refused in one line
    naming both, so no command labels or scores a dataset with another vocabulary or model preset."""
    from pipeline.config import resolve_vocabulary
    from pipeline.dataset.location import LocationError, location
    from pipeline.dataset.manifest import made_with

    try:
        where = location(folder)
    except LocationError as err:  # as the config's validation words it
        raise ConfigError(f"{flag}: {err}") from None
    made = made_with(where) or {"vocab": None, "models": None, "n": None, "vocabulary": None}
    if None not in (vocab, made["vocab"]) and vocab != made["vocab"] and (
            made["vocabulary"] is None or resolve_vocabulary(vocab).to_dict() != made["vocabulary"]):
        raise ConfigError(f"--vocab {vocab}, but {flag} {folder} was made with --vocab {made['vocab']}; drop "
                          f"--vocab, or choose another {flag}")
    if None not in (models, made["models"]) and models != made["models"]:
        raise ConfigError(f"--models {models}, but {flag} {folder} was made with --models {made['models']}; drop "
                          f"--models, or choose another {flag}")
    return made["vocab"] or vocab or defaults[0], made["models"] or models or defaults[1]


def made_n(folder: str, n: int | None, default: int) -> int:
    """--n of a phase command on ``folder``: ``n`` where given, else the dataset's own n (so a phase run on a
    made dataset never silently plans to extend it to ``default``), else ``default``."""
    from pipeline.dataset.location import location
    from pipeline.dataset.manifest import made_with

    return n if n is not None else (made_with(location(folder)) or {}).get("n") or default


def run_config(*, vocab: str, out: str, models: str, seed: int, device: str, n: int = 1,
               sd_path: str | None = None, oracle_weights: str | None = None, bootstrap_n: int | None = None,
               train_steps: int | None = None, shard_size: int | None = None, shard_mb: float | None = None,
               batch_size: int | None = None, labeler: str = "grounding", dtype: str | None = None,
               compile: bool = False, pair_fraction: float = 0.5, image_format: str = "jpg") -> RunConfig:
    """The validated run config: the model preset with the flags that were given (None: the preset's)."""
    from pydantic import ValidationError

    from pipeline.config import RunConfig, load_preset, one_line, resolve_vocabulary

    preset = load_preset(models, {"sd": sd_path, "oracle_weights": oracle_weights, "bootstrap_n": bootstrap_n,
                                  "shard_size": shard_size, "batch_size": batch_size, "dtype": dtype,
                                  "train": {"steps": train_steps}})
    resolve_vocabulary(vocab)  # fail early on a bad vocabulary
    try:
        config = RunConfig(vocab=vocab, out=out, preset_name=models, preset=preset, seed=seed, n=n, device=device,
                           labeler=labeler, compile=compile, pair_fraction=pair_fraction,
                           image_format=image_format)
    except ValidationError as err:
        raise one_line(err, lambda where: f"--{where.replace('.', '-')}") from err
    return config if shard_mb is None else _sized(config, shard_size, shard_mb)


def _sized(config: RunConfig, shard_size: int | None, shard_mb: float) -> RunConfig:
    """The config with --shard-mb converted to samples per shard (from its image size and format)."""
    from pipeline.dataset.sizing import samples_per_shard

    if shard_size is not None:
        raise ConfigError("pass --shard-size or --shard-mb, not both")
    if shard_mb <= 0:
        raise ConfigError(f"--shard-mb must be greater than 0, not {shard_mb}")
    size = samples_per_shard(shard_mb, config.preset.image_size, config.image_format)
    return config.model_copy(update={"preset": config.preset.model_copy(update={"shard_size": size})})


def executor_settings(*, kind: str, ray_address: str | None, workers: int | None, gpus_per_worker: float | None,
                      cpus_per_worker: float, encode_cpus: float) -> ExecutorSettings:
    from pydantic import ValidationError

    from pipeline.config import one_line
    from pipeline.run.executors import ExecutorSettings

    try:
        return ExecutorSettings(kind="ray" if ray_address else kind, ray_address=ray_address, workers=workers,
                                gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                encode_cpus=encode_cpus)
    except ValidationError as err:
        raise one_line(err, lambda where: "--" + ("executor" if where == "kind" else where.replace("_", "-"))) \
            from err
