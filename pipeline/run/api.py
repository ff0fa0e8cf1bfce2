"""Make (or resume) a dataset from Python: ``make_dataset(config)``, with no command line involved.

It claims the output folder (refusing one that holds something else), holds the per-machine lock,
recovers an interrupted training, runs the phases the labeler needs on an executor, records what
labelled the shards, and writes the dataset card and the wids index. Finished shards are kept and
skipped, so a second call with the same config resumes the first. The ``datagen`` phase commands
parse flags, call it and print its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from rich.progress import Progress

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset.checkpoint import training_record
from pipeline.dataset.layout import ALL_PHASES, DATA_DIR, MANIFEST, ORACLE_DIR, WIDS_INDEX, Phase
from pipeline.dataset.location import listing
from pipeline.dataset.manifest import (
    check_output,
    check_writable,
    model_records,
    output_lock,
    prepare_output,
    record_labeller,
    record_shards,
    restore_classes,
)
from pipeline.dataset.plan import errored_samples
from pipeline.dataset.reader import write_wids_index
from pipeline.dataset.shards import finished_stats, summarize
from pipeline.dataset.zero_shot import NOT_ZERO_SHOT
from pipeline.inspect.card import write_card
from pipeline.run.executors import Executor, ExecutorSettings, make_executor
from pipeline.run.phases import check_earlier_phases, has_pending_work, run_shard_phase, run_train_phase
from pipeline.run.workers import ShardWorker
from pipeline.runtime import Runtime
from pipeline.training.job import recover_interrupted_training


def _quiet(_text: str) -> None:
    pass


@dataclass
class RunHooks:
    """How a run talks while it works: progress bars and one-line notes (the CLI prints them)."""

    progress: Progress | None = None  # started once the checks are passed and the work begins
    info: Callable[[str], None] = _quiet
    warn: Callable[[str], None] = _quiet


@dataclass
class RunResult:
    """What a call of ``make_dataset`` did and left."""

    out: object  # the output folder (a Path, or an object store's UPath)
    phases: frozenset[Phase]  # the phases asked for, as the labeler needs them
    complete: bool  # nothing was left to do: no model was loaded
    restored_classes: bool = False  # classes.json of a complete dataset was missing or damaged, and rewritten
    training: dict | None = None  # phase B's record, when it ran or found its checkpoint current
    labels: dict | None = None  # the manifest's ``labels``: what labelled the shards, and whether zero-shot
    failed_shards: dict[Phase, dict[int, str]] = field(default_factory=dict)  # shards that failed every retry
    errored_samples: int = 0  # samples that raised (not filtered) in the phases run; a rerun retries them
    seconds: float = 0.0

    @property
    def shown(self) -> Phase:
        """The phase whose shards the run's summary counts: the dataset, or the oracle data without phase C."""
        return Phase.LABEL if Phase.LABEL in self.phases else Phase.ORACLE

    @property
    def summary(self) -> dict:
        """Samples, shards, failures by reason and per-class counts of the ``shown`` folder, from its stats."""
        return summarize(self.out / self.shown.folder)

    @property
    def ok(self) -> bool:
        return not self.failed_shards and not self.errored_samples


def phases_for(config: RunConfig, phases: frozenset[Phase]) -> frozenset[Phase]:
    """The phases asked for that the labeler needs: one that needs no training skips phases A and B."""
    return phases if config.labeler_class().trained else phases & {Phase.LABEL}


def make_dataset(config: RunConfig, phases: frozenset[Phase] = ALL_PHASES,
                 executor: ExecutorSettings | None = None, hooks: RunHooks | None = None) -> RunResult:
    """Make or resume ``config``'s dataset (``phases``: all, or one phase as `datagen generate` / `train` /
    `label` run it). Raises ``DatagenError`` (one line) for what cannot run, before any work; a
    KeyboardInterrupt leaves finished shards in place for the next call."""
    started, hooks = time.time(), hooks or RunHooks()
    needed = phases_for(config, phases)
    if not needed:
        raise ConfigError(f"--labeler {config.labeler} needs no phase A or B (it trains nothing): run `datagen "
                          "label` or `datagen run`")
    phases = needed
    labelling = Phase.LABEL in phases
    check_output(config, labelling=labelling)
    if not has_pending_work(config, phases):
        with output_lock(config):
            restored = restore_classes(config, config.vocabulary())
            if labelling:
                _write_card_and_index(config, only_if_stale=True)
        return RunResult(config.out, phases, complete=True, restored_classes=restored)
    check_writable(config.out)
    result = RunResult(config.out, phases, complete=False)
    with output_lock(config):
        if config.out.exists():
            recover_interrupted_training(config.out)
        check_earlier_phases(config, phases)
        _run_phases(config, result, executor or ExecutorSettings(), hooks)
    folders = [config.out / p.folder for p in (Phase.ORACLE, Phase.LABEL) if p in phases]
    if Phase.ORACLE not in result.failed_shards:
        result.errored_samples = sum(errored_samples(stats) for folder in folders for stats in finished_stats(folder))
    result.seconds = time.time() - started
    return result


def _run_phases(config: RunConfig, result: RunResult, settings: ExecutorSettings, hooks: RunHooks) -> None:
    """Phases A, B, C as ``result.phases`` asks, filling ``result``; stops after a phase whose shards failed."""
    phases, runtime = result.phases, Runtime(config)
    labeler = config.labeler_class()
    runtime.check_weights(oracle=Phase.ORACLE in phases, labelers=(labeler,) if Phase.LABEL in phases else (),
                          grounding=Phase.LABEL in phases and Phase.TRAIN not in phases and labeler.trained)
    hooks.info(f"datagen: preset {config.preset_name} on {runtime.device}, labeler {config.labeler}, "
               f"output {config.out}")
    worker = ShardWorker(config, runtime)
    executor = make_executor(settings, worker=worker)
    executor.check()
    oracle = runtime.oracle_source() if labeler.trained else None
    prepare_output(config, {"config": config.model_dump(mode="json"), **model_records(
        runtime.sd_source(), oracle, config.preset.oracle_backend, config.preset.oracle_config)},
        config.vocabulary(), (ORACLE_DIR, DATA_DIR) if oracle else (DATA_DIR,), labelling=Phase.LABEL in phases)
    with hooks.progress or nullcontext():
        _work(config, result, worker, executor, hooks)
    if result.labels is not None:  # phase C ran
        _write_card_and_index(config)


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """This process's torch threads set to ``count`` (None: left as they are) while phase B trains here:
    with Ray, training runs in this process and the shards in workers, so a Ray run trains with its
    workers' thread count and writes the bytes of an in-process run with that many threads (CPU float
    sums depend on the thread count: a checkpoint trained with another would change label scores)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _work(config: RunConfig, result: RunResult, worker: ShardWorker, executor: Executor, hooks: RunHooks) -> None:
    """The phases' model work, with the progress bars shown."""
    runtime = worker.runtime
    phases, labeler = result.phases, config.labeler_class()
    if Phase.ORACLE in phases:
        report = run_shard_phase(config, Phase.ORACLE, executor, hooks.progress)
        if report.failed_shards:
            result.failed_shards[Phase.ORACLE] = report.failed_shards
            return
    if Phase.TRAIN in phases:
        with torch_threads(executor.torch_threads):
            result.training = run_train_phase(config, runtime, hooks.progress)
        if not result.training.get("skipped"):
            hooks.info(f"grounding module: loss {result.training['first_loss']:.4f} -> "
                       f"{result.training['last_loss']:.4f} in {result.training['steps']} steps")
    if Phase.LABEL not in phases:
        return
    checkpoint = training_record(config.out) if labeler.trained else None
    result.labels = record_labeller(config, worker.labeler.provenance(), checkpoint)  # before any shard: kept
    if result.labels["zero_shot"] is False:
        hooks.warn(f"labels of {config.out}: {NOT_ZERO_SHOT}")
    report = run_shard_phase(config, Phase.LABEL, executor, hooks.progress)
    if report.failed_shards:
        result.failed_shards[Phase.LABEL] = report.failed_shards


def _write_card_and_index(config: RunConfig, only_if_stale: bool = False) -> None:
    """Record the shards' digests in the manifest, write the dataset card and the wids index; ``only_if_stale``:
    only when the card or the index is missing or older than the manifest or a shard's stats (a run killed
    after its last shard wrote neither). Times are the file system's, or the store's (one listing per folder)."""
    data = config.out / DATA_DIR
    if only_if_stale:
        top, shards = listing(config.out), listing(data)
        sources = [top.get(MANIFEST), *(e for name, e in shards.items() if name.endswith(".stats.json"))]
        newest = max(e.modified for e in sources if e)
        if all(e and e.modified >= newest for e in (top.get("README.md"), shards.get(WIDS_INDEX))):
            return
    record_shards(config.out)
    write_card(config.out)
    write_wids_index(data)
