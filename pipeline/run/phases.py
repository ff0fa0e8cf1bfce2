"""The pipeline's phases: oracle bootstrap (A), grounding training (B), labelling (C)."""

from __future__ import annotations

from rich.progress import Progress

from pipeline.config import RunConfig
from pipeline.dataset.checkpoint import grounding_installed
from pipeline.dataset.layout import GROUNDING_DIR, TRAINING_RECORD, Phase
from pipeline.dataset.location import is_remote
from pipeline.dataset.plan import ShardTask, missing, pending, plan_shards
from pipeline.dataset.shards import finished_shards, finished_stats, read_json_object, shard_name, summarize
from pipeline.run.executors import ExecutionReport, Executor
from pipeline.runtime import Runtime
from pipeline.training.job import run_training
from pipeline.training.oracle_data import NoTrainingSamples, oracle_batches, oracle_validation_batches
from stages.errors import DatagenError


class PhaseError(DatagenError):
    """A phase that cannot run with what the earlier phases produced; one line for the user."""


def shard_tasks(config: RunConfig, phase: Phase) -> list[ShardTask]:
    """Every shard of a shard-writing phase (A: ``bootstrap_n`` samples, C: ``n``)."""
    n = config.preset.bootstrap_n if phase is Phase.ORACLE else config.n
    return plan_shards(phase, n, config.preset.shard_size, config.out / phase.folder)


def run_shard_phase(config: RunConfig, phase: Phase, executor: Executor,
                    progress: Progress | None = None) -> ExecutionReport:
    """Phase A (seen-class prompts -> images + latents at the capture step -> Mask R-CNN labels) or
    phase C (prompts over all classes -> images + features or attention in flight -> grounding or
    attention labels): the shards not yet finished, on ``executor``."""
    todo = pending(shard_tasks(config, phase))
    total = sum(t.end - t.start for t in todo)
    description = {Phase.ORACLE: "A oracle bootstrap", Phase.LABEL: f"C label ({config.labeler})"}[phase]
    bar = progress.add_task(description, total=total) if progress and todo else None
    return executor.run(todo, config, lambda k: progress.advance(bar, k) if bar is not None else None)


def oracle_data(config: RunConfig) -> dict[str, int]:
    """The finished oracle shards and how many samples each holds: what a checkpoint was trained on."""
    return {shard_name(s["shard"]): s["written"] for s in finished_stats(config.out / Phase.ORACLE.folder)}


def _training_record(config: RunConfig) -> dict | None:
    """The checkpoint's training record; None without one, PhaseError when it is damaged (then nothing
    tells what the checkpoint was trained on: neither kept nor replaced without the user's word)."""
    record = config.out / GROUNDING_DIR / TRAINING_RECORD
    if not record.exists():
        return None
    try:
        return read_json_object(record)
    except ValueError as err:
        raise PhaseError(f"{record} is damaged ({err}): nothing tells what the grounding checkpoint beside it was "
                         f"trained on; delete {record.parent} to train it again (the shards are kept)") from err


def training_is_current(config: RunConfig) -> bool:
    """A checkpoint exists for this config, trained on exactly the oracle samples now on disk."""
    trained = _training_record(config)
    return trained is not None and trained.get("source") == "oracle" \
        and trained.get("fingerprint") == config.fingerprint() and trained.get("oracle_shards") == oracle_data(config)


def has_pending_work(config: RunConfig, phases: frozenset[Phase]) -> bool:
    return (Phase.ORACLE in phases and bool(pending(shard_tasks(config, Phase.ORACLE)))) \
        or (Phase.TRAIN in phases and not training_is_current(config)) \
        or (Phase.LABEL in phases and bool(pending(shard_tasks(config, Phase.LABEL))))


def check_phase_a_finished(config: RunConfig) -> None:
    if todo := missing(shard_tasks(config, Phase.ORACLE)):
        raise PhaseError(f"phase A is unfinished ({len(todo)} oracle shards missing in {config.out}): run "
                         "`datagen generate` with the same flags first, so the grounding module trains on all "
                         "its data")


def check_earlier_phases(config: RunConfig, phases: frozenset[Phase]) -> None:
    """A phase command run on its own needs what the earlier phases made; say which to run.

    Phase C may use a checkpoint trained on real annotated images (``datagen train-annotated``): the
    user chose it on purpose."""
    if Phase.TRAIN in phases and Phase.ORACLE not in phases:
        check_phase_a_finished(config)
    if not (Phase.LABEL in phases and Phase.TRAIN not in phases and config.labeler_class().trained
            and (config.out / GROUNDING_DIR).exists()):
        return
    if is_remote(config.out) and not grounding_installed(config.out):
        raise PhaseError(f"the grounding checkpoint in {config.out} is incomplete (its upload was cut short): run "
                         "`datagen train` with the same flags first")
    trained = _training_record(config)
    if not training_is_current(config) and (trained or {}).get("source") != "annotated":
        raise PhaseError(f"the grounding checkpoint in {config.out} was trained on other oracle samples than "
                         "those now on disk: run `datagen train` with the same flags first")


def run_train_phase(config: RunConfig, runtime: Runtime, progress: Progress | None = None) -> dict:
    """Phase B: train the grounding module on the oracle shards; skipped when already current.

    A held-out split of the oracle samples (by key, ``train.val_fraction``) is kept for validation; a
    killed run resumes from its last checkpoint (``pipeline.training.job``)."""
    if training_is_current(config):
        return _training_record(config) | {"skipped": True}
    check_phase_a_finished(config)
    oracle_dir = config.out / Phase.ORACLE.folder
    shards, oracle = finished_shards(oracle_dir), summarize(oracle_dir)
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
            shards, vocab, train.batch_size, config.seed, train.val_fraction, skip), validation, progress,
            zero_shot=True)  # phase A prompts and labels seen classes only
    except NoTrainingSamples as err:
        raise PhaseError(f"every oracle sample is in the validation split (val_fraction "
                         f"{train.val_fraction}): generate more with --bootstrap-n") from err
