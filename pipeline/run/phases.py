"""The pipeline's phases: oracle bootstrap (A), grounding training (B), labelling (C)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from rich.progress import Progress

from pipeline.config import RunConfig
from pipeline.dataset.manifest import DATA_DIR, ORACLE_DIR, summarize
from pipeline.run.executors import ExecutionReport, Executor
from pipeline.run.plan import ShardTask, missing, pending, plan_shards
from pipeline.run.runtime import GROUNDING_DIR, Runtime
from pipeline.dataset.shards import finished_shards, finished_stats, shard_name
from pipeline.training.job import TRAINING_RECORD, run_training
from pipeline.training.oracle_data import oracle_batches, oracle_validation_batches


class PhaseError(RuntimeError):
    """A phase that cannot run with what the earlier phases produced; one line for the user."""


def _run_shards(phase: str, n: int, folder: Path, config: RunConfig, executor: Executor,
                progress: Progress | None, description: str) -> ExecutionReport:
    todo = pending(plan_shards(phase, n, config.preset.shard_size, folder))
    total = sum(t.end - t.start for t in todo)
    bar = progress.add_task(description, total=total) if progress and todo else None
    return executor.run(todo, config, lambda k: progress.advance(bar, k) if bar is not None else None)


def run_oracle_phase(config: RunConfig, executor: Executor, progress: Progress | None = None):
    """Phase A: seen-class prompts -> images + latents at the capture step -> Mask R-CNN labels."""
    return _run_shards("oracle", config.preset.bootstrap_n, config.out / ORACLE_DIR, config, executor,
                       progress, "A oracle bootstrap")


def run_label_phase(config: RunConfig, executor: Executor, progress: Progress | None = None):
    """Phase C: prompts over all classes -> images + features in flight -> grounding labels."""
    return _run_shards("label", config.n, config.out / DATA_DIR, config, executor, progress,
                       "C label")


def oracle_tasks(config: RunConfig) -> list[ShardTask]:
    return plan_shards("oracle", config.preset.bootstrap_n, config.preset.shard_size, config.out / ORACLE_DIR)


def oracle_data(config: RunConfig) -> dict[str, int]:
    """The finished oracle shards and how many samples each holds: what a checkpoint was trained on."""
    return {shard_name(s["shard"]): s["written"] for s in finished_stats(config.out / ORACLE_DIR)}


def training_is_current(config: RunConfig) -> bool:
    """A checkpoint exists for this config, trained on exactly the oracle samples now on disk."""
    record = config.out / GROUNDING_DIR / TRAINING_RECORD
    if not record.exists():
        return False
    trained = json.loads(record.read_text())
    return trained.get("source") == "oracle" and trained.get("fingerprint") == config.fingerprint() \
        and trained.get("oracle_shards") == oracle_data(config)


def _training_source(config: RunConfig) -> str | None:
    """What the checkpoint was trained on: "oracle" (phase B) or "annotated" (real annotated images,
    which the user chose on purpose and label may use)."""
    record = config.out / GROUNDING_DIR / TRAINING_RECORD
    return json.loads(record.read_text()).get("source") if record.exists() else None


def check_phase_a_finished(config: RunConfig) -> None:
    if todo := missing(oracle_tasks(config)):
        raise PhaseError(f"phase A is unfinished ({len(todo)} oracle shards missing in {config.out}): run "
                         "`datagen generate` with the same flags first, so the grounding module trains on all "
                         "its data")


def check_earlier_phases(config: RunConfig, phases: set[str]) -> None:
    """A phase command run on its own needs what the earlier phases made; say which to run."""
    if "train" in phases and "oracle" not in phases:
        check_phase_a_finished(config)
    if "label" in phases and "train" not in phases and (config.out / GROUNDING_DIR).exists() \
            and not training_is_current(config) and _training_source(config) != "annotated":
        raise PhaseError(f"the grounding checkpoint in {config.out} was trained on other oracle samples than "
                         "those now on disk: run `datagen train` with the same flags first")


def run_train_phase(config: RunConfig, runtime: Runtime, progress: Progress | None = None) -> dict:
    """Phase B: train the grounding module on the oracle shards; skipped when already current.

    A held-out split of the oracle samples (by key, ``train.val_fraction``) is kept for validation; a
    killed run resumes from its last checkpoint (``pipeline.training.job``)."""
    folder = config.out / GROUNDING_DIR
    if training_is_current(config):
        return json.loads((folder / TRAINING_RECORD).read_text()) | {"skipped": True}
    check_phase_a_finished(config)
    shards = finished_shards(config.out / ORACLE_DIR)
    oracle = summarize(config.out / ORACLE_DIR)
    if not oracle["written"]:
        raise PhaseError(f"phase A wrote no oracle samples ({oracle['failed'] or 'no shards'}): nothing to "
                         "train the grounding module on; run `datagen generate` with a larger --bootstrap-n")
    vocab, train = config.vocabulary(), config.preset.train
    job = {"fingerprint": config.fingerprint(), "source": "oracle", "oracle_shards": oracle_data(config)}
    has_validation = train.val_fraction > 0 and next(
        oracle_validation_batches(shards, vocab, 1, train.val_fraction), None) is not None
    validation = (lambda: oracle_validation_batches(shards, vocab, train.batch_size, train.val_fraction)) \
        if has_validation else None
    try:
        return run_training(config, runtime, job, lambda skip: oracle_batches(
            shards, vocab, train.batch_size, config.seed, train.val_fraction, skip), validation, progress)
    except ValueError as err:
        if "no training samples" in str(err):
            raise PhaseError(f"every oracle sample is in the validation split (val_fraction "
                             f"{train.val_fraction}): generate more with --bootstrap-n") from err
        raise


def recover_interrupted_training(out: Path) -> None:
    """After a kill during the checkpoint swap: put the previous checkpoint back, drop temporaries."""
    folder = out / GROUNDING_DIR
    for old in sorted(out.glob(f"{GROUNDING_DIR}.old*")):
        if not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in out.glob(f"{GROUNDING_DIR}.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


