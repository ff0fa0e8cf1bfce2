"""The phase commands (`datagen run`, `generate`, `train`, `label`) and `datagen prompts`."""

from __future__ import annotations

import inspect
import json
import time
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli import options as opt
from pipeline.cli.app import app, console
from pipeline.cli.progress import progress_bar
from pipeline.config import ConfigError, RunConfig, resolve_vocabulary
from pipeline.dataset.layout import ALL_PHASES, CLASSES, DATA_DIR, MANIFEST, WIDS_INDEX, Phase
from pipeline.dataset.location import listing
from pipeline.dataset.manifest import (
    check_output,
    check_writable,
    output_lock,
    prepare_output,
    record_labeller,
    restore_classes,
)
from pipeline.dataset.plan import errored_samples
from pipeline.dataset.reader import write_wids_index
from pipeline.dataset.shards import finished_stats, summarize
from pipeline.dataset.zero_shot import NOT_ZERO_SHOT, training_record
from pipeline.inspect.card import write_card
from pipeline.run.executors import ExecutionReport, ExecutorSettings, make_executor
from pipeline.run.phases import check_earlier_phases, has_pending_work, run_shard_phase, run_train_phase
from pipeline.run.workers import ShardWorker
from pipeline.runtime import Runtime
from pipeline.training.job import recover_interrupted_training
from stages.prompts import prompt_specs


def _execute(config: RunConfig, phases: frozenset[Phase], settings: ExecutorSettings) -> None:
    started = time.time()
    labelling = Phase.LABEL in phases
    check_output(config, labelling=labelling)
    if not has_pending_work(config, phases):
        console.print(f"[green]dataset is complete[/]: nothing to do in {config.out}")
        with output_lock(config):
            if restore_classes(config):
                console.print(f"rewrote {config.out / CLASSES} (it was missing, damaged or another vocabulary's)",
                              highlight=False)
            if labelling:
                _write_card_and_index(config, only_if_stale=True)
        _print_summary(config, phases)
        return
    check_writable(config.out)
    with output_lock(config):
        if config.out.exists():
            recover_interrupted_training(config.out)
        check_earlier_phases(config, phases)
        try:
            label_report = _run_phases(config, phases, settings)
        except KeyboardInterrupt:
            console.print("interrupted: finished shards are kept; rerun the same command to resume")
            raise typer.Exit(130) from None
    _print_summary(config, phases)
    where = f": dataset in {config.out / DATA_DIR}, card {config.out / 'README.md'}" if labelling else ""
    console.print(f"done in {time.time() - started:.1f} s{where}", highlight=False)
    if label_report is not None:
        _stop_on_failed_shards(label_report, Phase.LABEL)
    _exit_on_errors(config, phases)


def _run_phases(config: RunConfig, phases: frozenset[Phase], settings: ExecutorSettings) -> ExecutionReport | None:
    """Phases A, B, C as asked; phase C's report (None without it) for the caller to judge."""
    runtime = Runtime(config)
    attention = config.labeler == "attention"
    runtime.check_weights(oracle=Phase.ORACLE in phases, attention=attention,
                          grounding=Phase.LABEL in phases and Phase.TRAIN not in phases and not attention)
    console.print(f"datagen: preset [bold]{config.preset_name}[/] on {runtime.device}, labeler {config.labeler}, "
                  f"output {config.out}")
    executor = make_executor(settings, worker=ShardWorker(config, runtime))
    executor.check()
    prepare_output(config, runtime.sd_source(), None if attention else runtime.oracle_source(),
                   labelling=Phase.LABEL in phases)
    with progress_bar(console) as progress:
        if Phase.ORACLE in phases:
            _stop_on_failed_shards(run_shard_phase(config, Phase.ORACLE, executor, progress), Phase.ORACLE)
        if Phase.TRAIN in phases:
            record = run_train_phase(config, runtime, progress)
            if not record.get("skipped"):
                console.print(f"grounding module: loss {record['first_loss']:.4f} -> "
                              f"{record['last_loss']:.4f} in {record['steps']} steps")
        if Phase.LABEL not in phases:
            return None
        labels = record_labeller(config, training_record(config.out),  # before any shard: a kill keeps it
                                 runtime.attention.describe() if attention else None)
        if labels["zero_shot"] is False:
            console.print(f"[yellow]labels of {config.out}: {NOT_ZERO_SHOT}[/]", highlight=False)
        report = run_shard_phase(config, Phase.LABEL, executor, progress)
    _write_card_and_index(config)
    return report


def _write_card_and_index(config: RunConfig, only_if_stale: bool = False) -> None:
    """Write the dataset card and the wids index; ``only_if_stale``: only when either is missing or
    older than the manifest or a shard's stats (a run killed after its last shard wrote neither). Times
    are the file system's, or the store's (one listing per folder)."""
    data = config.out / DATA_DIR
    if only_if_stale:
        top, shards = listing(config.out), listing(data)
        sources = [top.get(MANIFEST), *(e for name, e in shards.items() if name.endswith(".stats.json"))]
        newest = max(e.modified for e in sources if e)
        if all(e and e.modified >= newest for e in (top.get("README.md"), shards.get(WIDS_INDEX))):
            return
    write_card(config.out)
    write_wids_index(data)


def _stop_on_failed_shards(report: ExecutionReport, phase: Phase) -> None:
    """Exit 1 after naming every shard that failed all its retries; later phases do not run."""
    if report.failed_shards:
        for sid, err in sorted(report.failed_shards.items()):
            console.print(f"[red]phase {phase.letter}: shard {sid} failed[/]: {err}", highlight=False)
        console.print("rerun the same command to retry the failed shards; finished shards are kept")
        raise typer.Exit(1)


def _exit_on_errors(config: RunConfig, phases: frozenset[Phase]) -> None:
    """Exit 1 when samples raised (not filtered: raised) in the phases run; a rerun retries them."""
    folders = [config.out / p.folder for p in (Phase.ORACLE, Phase.LABEL) if p in phases]
    errored = sum(errored_samples(stats) for folder in folders for stats in finished_stats(folder))
    if errored:
        console.print(f"[red]{errored} samples raised errors[/] (reasons in the shard stats); rerun the same "
                      "command to retry them")
        raise typer.Exit(1)


def _print_summary(config: RunConfig, phases: frozenset[Phase]) -> None:
    shown = Phase.LABEL if Phase.LABEL in phases else Phase.ORACLE
    folder, label = config.out / shown.folder, "dataset" if shown is Phase.LABEL else "oracle data"
    summary = summarize(folder)
    table = Table(title=f"{label}: {summary['written']} samples in {summary['shards']} shards ({folder})")
    table.add_column("class")
    table.add_column("split")
    table.add_column("instances", justify="right")
    for c in config.vocabulary().classes:
        if c.name in summary["class_instances"]:
            table.add_row(c.name, "seen" if c.seen else "unseen", str(summary["class_instances"][c.name]))
    console.print(table)
    failed = ", ".join(f"{k}: {v}" for k, v in sorted(summary["failed"].items())) or "none"
    console.print(f"failed samples by reason: {failed}")
    print(json.dumps({"out": str(config.out), "folder": str(folder), **summary}))


def _phase_command(phases: frozenset[Phase], help_text: str):
    def command(
        vocab: opt.Vocab = "coco", n: opt.N = 110000, out: opt.Out = "runs/datagen", models: opt.Models = "sd15",
        seed: opt.Seed = 0, sd_path: opt.SdPath = None, oracle_weights: opt.OracleWeights = None,
        device: opt.Device = "auto", bootstrap_n: opt.BootstrapN = None, train_steps: opt.TrainSteps = None,
        shard_size: opt.ShardSize = None, shard_mb: opt.ShardMb = None, batch_size: opt.BatchSize = None,
        executor: opt.ExecutorKind = "local", ray_address: opt.RayAddress = None, workers: opt.Workers = None,
        gpus_per_worker: opt.GpusPerWorker = None, cpus_per_worker: opt.CpusPerWorker = 1.0,
        encode_cpus: opt.EncodeCpus = 1.0, labeler: opt.Labeler = "grounding", dtype: opt.Dtype = None,
        compile: opt.Compile = False,
    ):
        settings = opt.executor_settings(kind=executor, ray_address=ray_address, workers=workers,
                                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                         encode_cpus=encode_cpus)
        config = opt.run_config(vocab=vocab, n=n, out=out, models=models, seed=seed, sd_path=sd_path,
                                oracle_weights=oracle_weights, device=device, bootstrap_n=bootstrap_n,
                                train_steps=train_steps, shard_size=shard_size, shard_mb=shard_mb,
                                batch_size=batch_size, labeler=labeler, dtype=dtype, compile=compile)
        _execute(config, frozenset({Phase.LABEL}) if config.labeler == "attention" else phases, settings)

    command.__doc__ = help_text
    if Phase.LABEL not in phases:  # --labeler is phase C's choice: generate and train do not offer it
        signature = inspect.signature(command)
        command.__signature__ = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != "labeler"])
    return command


app.command("run")(_phase_command(ALL_PHASES, "Every phase: oracle bootstrap, grounding training, labelling "
                                              "(with --labeler attention: labelling only)."))
for _phase, _help in ((Phase.ORACLE, "Phase A: seen-class images labelled by the Mask R-CNN oracle."),
                      (Phase.TRAIN, "Phase B: train the grounding module on the oracle shards."),
                      (Phase.LABEL, "Phase C: generate and label the dataset with the grounding module (or "
                                    "with cross-attention maps: --labeler attention).")):
    app.command(_phase.command)(_phase_command(frozenset({_phase}), _help))


@app.command()
def prompts(vocab: opt.Vocab = "coco", n: Annotated[int, typer.Option(help="How many prompts.")] = 10,
            seed: opt.Seed = 0,
            phase: Annotated[str, typer.Option(help="label (all classes) or oracle (seen).")] = "label",
            start: Annotated[int, typer.Option(help="First sample index.")] = 0):
    """Print the deterministic prompt specs (JSON lines) that a run would use."""
    vocabulary = resolve_vocabulary(vocab)
    if phase not in (Phase.LABEL, Phase.ORACLE):
        raise ConfigError(f"--phase must be label or oracle, not '{phase}'")
    classes = vocabulary.seen if phase == Phase.ORACLE else vocabulary.classes
    for spec in prompt_specs(vocabulary, classes, phase, seed, range(start, start + n)):
        print(json.dumps(spec.to_dict()))
