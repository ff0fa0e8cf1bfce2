"""Runs a grounding training job: resumable checkpoints, validation, progress, the final checkpoint.

Both training sources use it: phase B (oracle shards, ``pipeline.run.phases.run_train_phase``) and real annotated
images (``train_on_annotated``). While training, ``OUT/grounding-resume/`` holds the latest resumable
checkpoint (module, optimizer, schedule, losses, validation history, and what the job trains on); a
rerun of the same job continues from it, a different job discards it. The finished module replaces
``OUT/grounding/`` whole (``atomic.replace_folder``), and the resume folder is removed. On an object
store each folder's marker (the training record, the progress record) is uploaded last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.progress import Progress

from pipeline.config import RunConfig
from pipeline.dataset.atomic import recover_folder, replace_folder, write_json_atomic
from pipeline.dataset.layout import GROUNDING_DIR, RESUME_DIR, TRAINING_RECORD
from pipeline.dataset.location import local_copy, remove_tree
from pipeline.dataset.voc import voc_images
from pipeline.run import faults
from pipeline.runtime import Runtime
from pipeline.training.annotated import annotated_batches, annotated_validation_batches
from stages.grounding.model import GroundingConfig, GroundingModule, save_grounding
from stages.grounding.train import PROGRESS, GroundingTrainer, TrainOptions, fit


def feature_channels(runtime: Runtime) -> dict[int, int]:
    """Channels per resolution of the captured UNet features (one probe pass on a zero latent)."""
    cfg = runtime.pipe.unet.config
    latent = torch.zeros(1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    features = runtime.diffusion.features_from_latent(latent, 1, [""])
    return {res: f.shape[1] for res, f in features.items()}


def new_trainer(config: RunConfig, runtime: Runtime) -> GroundingTrainer:
    """A freshly initialised (seeded) module sized by the preset, and its trainer."""
    preset, train = config.preset, config.preset.train
    torch.manual_seed(config.seed)
    module = GroundingModule(GroundingConfig(
        feature_channels=feature_channels(runtime), text_dim=runtime.pipe.text_encoder.config.hidden_size,
        image_size=preset.image_size, **preset.grounding.model_dump()))
    options = TrainOptions(steps=train.steps, lr=train.lr, accumulate=train.accumulate,
                           warmup_steps=train.warmup_steps, schedule=train.schedule, precision=train.precision)
    return GroundingTrainer(module, runtime.class_text, runtime.diffusion,
                            config.vocabulary().text_template, options)


def run_training(config: RunConfig, runtime: Runtime, job: dict,
                 batches: Callable[[int], Iterator[dict]], validation: Callable[[], Iterator[dict]] | None,
                 progress: Progress | None = None, description: str = "B train", *,
                 zero_shot: bool) -> dict:
    """Train (resuming a matching checkpoint), then install the module as ``OUT/grounding``.

    ``job`` identifies what is trained on (written into every checkpoint and the final record);
    ``batches(skip)`` gives the training stream after ``skip`` batches; ``validation()`` one pass over
    the held-out batches, or None when there are none. ``zero_shot``: no unseen class is a target of
    ``batches``; the record says so (``pipeline.dataset.zero_shot``).
    """
    train = config.preset.train
    trainer = new_trainer(config, runtime)
    recover_interrupted_training(config.out)
    resume = config.out / RESUME_DIR
    if _resumable(resume, job):
        with local_copy(resume) as folder:
            trainer.restore(folder)
    else:
        remove_tree(resume)
    resumed_at = trainer.step
    bar = progress.add_task(description, total=train.steps, completed=resumed_at) if progress else None

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            val = trainer.validation[-1]["miou"] if trainer.validation else None
            shown = f" mIoU {val:.3f}" if val is not None else ""
            progress.update(bar, completed=step, description=f"{description} loss {loss:.3f}{shown}")

    def checkpoint() -> None:
        replace_folder(resume, lambda folder: trainer.save(folder, {"job": job}), last=PROGRESS)
        faults.training_fault(trainer.step)

    started = time.time()
    fit(trainer, batches(trainer.step * train.accumulate), validate=validation,
        validate_every=train.validate_every, checkpoint=checkpoint, checkpoint_every=train.checkpoint_every,
        on_step=on_step)
    record = {**job, "vocab": config.vocab, "preset_name": config.preset_name,  # what eval's defaults read
              "zero_shot": zero_shot, "steps": trainer.step, "resumed_at": resumed_at,
              "first_loss": trainer.losses[0], "last_loss": trainer.losses[-1], "losses": trainer.losses,
              "validation": trainer.validation, "seconds": round(time.time() - started, 2),
              "precision": str(trainer.amp_dtype or "float32")}
    install(config.out, trainer.module, record)
    remove_tree(resume)
    runtime.__dict__.pop("grounding", None)  # reload the new checkpoint on next use
    return record


def _resumable(folder: Path, job: dict) -> bool:
    try:
        return json.loads((folder / PROGRESS).read_bytes()).get("job") == job
    except (OSError, ValueError):
        return False


def install(out: Path, module: GroundingModule, record: dict) -> None:
    """Put a trained module and its record at ``OUT/grounding``, replacing the previous one whole."""
    def fill(folder: Path) -> None:
        save_grounding(module, folder)
        write_json_atomic(folder / TRAINING_RECORD, record)

    replace_folder(out / GROUNDING_DIR, fill, last=TRAINING_RECORD)


def recover_interrupted_training(out: Path) -> None:
    """After a kill while a checkpoint was swapped in (``install`` or a resumable checkpoint): the
    previous one back in place, temporaries gone. Runs under the output lock."""
    for name in (GROUNDING_DIR, RESUME_DIR):
        recover_folder(out / name)


def train_on_annotated(config: RunConfig, runtime: Runtime, root: Path, split: str = "train",
                       val_split: str | None = "val", progress: Progress | None = None,
                       train_on_unseen: bool = False) -> dict:
    """Train the grounding module on real annotated images (VOC layout), validating on ``val_split``.

    Unseen-class pixels are ignored, so the checkpoint stays zero-shot, unless ``train_on_unseen``: then
    they are targets and its record says ``"zero_shot": false``. The choice is part of the job, so a
    resumed run never mixes the two."""
    vocab, train = config.vocabulary(), config.preset.train
    items = voc_images(root, split)
    held_out = voc_images(root, val_split) if val_split else None
    timestep = runtime.diffusion.capture_timestep
    size = config.preset.image_size
    job = {"fingerprint": config.fingerprint(), "source": "annotated", "root": str(Path(root).resolve()),
           "split": split, "images": len(items), "val_split": val_split, "train_on_unseen": train_on_unseen}
    validation = (lambda: annotated_validation_batches(held_out, vocab, size, timestep, train.batch_size,
                                                       config.seed, train_on_unseen)) if held_out else None
    return run_training(
        config, runtime, job,
        lambda skip: annotated_batches(items, vocab, size, timestep, train.batch_size, config.seed, skip,
                                       train_on_unseen),
        validation, progress, "train annotated", zero_shot=not train_on_unseen)
