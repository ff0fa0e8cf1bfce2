"""The phase commands (`datagen run`, `generate`, `train`, `label`) and `datagen prompts`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pipeline.cli import options as opt
from pipeline.cli.app import app, console
from pipeline.cli.progress import progress_bar
from pipeline.dataset.layout import ALL_PHASES, CLASSES, DATA_DIR, Phase
from stages.errors import ConfigError

RunVocab, RunModels = opt.made_vocab("coco"), opt.made_models("sd15")

if TYPE_CHECKING:  # imported in the commands: `datagen --help` loads no models' code
    from pipeline.config import RunConfig
    from pipeline.run.api import RunResult
    from pipeline.run.executors import ExecutorSettings


def _execute(config: RunConfig, phases: frozenset[Phase], settings: ExecutorSettings) -> None:
    """Run ``make_dataset`` with progress bars, print what it did, and exit 1 on failed shards or samples."""
    from pipeline.run.api import RunHooks, make_dataset

    hooks = RunHooks(progress_bar(console), info=lambda text: console.print(text, highlight=False),
                     warn=lambda text: console.print(f"[yellow]{text}[/]", highlight=False))
    try:
        result = make_dataset(config, phases, settings, hooks)
    except KeyboardInterrupt:
        console.print("interrupted: finished shards are kept; rerun the same command to resume")
        raise typer.Exit(130) from None
    if result.complete:
        console.print(f"[green]dataset is complete[/]: nothing to do in {config.out}")
        if result.restored_classes:
            console.print(f"rewrote {config.out / CLASSES} (it was missing, damaged or another vocabulary's)",
                          highlight=False)
    elif Phase.ORACLE in result.failed_shards:
        _exit_on_failed_shards(result.failed_shards[Phase.ORACLE], Phase.ORACLE)
    _print_summary(config, result)
    if result.complete:
        return
    labelling = Phase.LABEL in result.phases
    where = f": dataset in {config.out / DATA_DIR}, card {config.out / 'README.md'}" if labelling else ""
    console.print(f"done in {result.seconds:.1f} s{where}", highlight=False)
    if Phase.LABEL in result.failed_shards:
        _exit_on_failed_shards(result.failed_shards[Phase.LABEL], Phase.LABEL)
    if result.errored_samples:
        console.print(f"[red]{result.errored_samples} samples raised errors[/] (reasons in the shard stats); rerun "
                      "the same command to retry them")
        raise typer.Exit(1)


def _exit_on_failed_shards(failed: dict[int, str], phase: Phase) -> None:
    """Exit 1 after naming every shard that failed all its retries; later phases did not run."""
    for sid, err in sorted(failed.items()):
        console.print(f"[red]phase {phase.letter}: shard {sid} failed[/]: {err}", highlight=False)
    console.print("rerun the same command to retry the failed shards; finished shards are kept")
    raise typer.Exit(1)


def _print_summary(config: RunConfig, result: RunResult) -> None:
    folder, label = config.out / result.shown.folder, "dataset" if result.shown is Phase.LABEL else "oracle data"
    summary = result.summary
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


def _print_plan(config: RunConfig, phases: frozenset[Phase]) -> None:
    """The dry run's plan: a table on the terminal, JSON on stdout."""
    from pipeline.dataset.manifest import check_output
    from pipeline.run.estimate import plan

    check_output(config, labelling=Phase.LABEL in phases)  # a folder this run would refuse is refused now
    shown = plan(config, phases)
    table = Table(title=f"plan: {config.out} (preset {shown['preset']}, vocab {shown['vocab']}, labeler "
                        f"{shown['labeler']}, on {shown['device']})", caption=f"time: {shown['time_source']}")
    for column in ("phase", "samples", "shards", "disk", "time"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for name, row in shown["phases"].items():
        table.add_row(f"{Phase(name).letter} {name}", str(row.get("samples", f"{row.get('steps')} steps")),
                      str(row.get("shards", "")), _size(row["bytes"]), _duration(row["seconds"]))
    table.add_row("[bold]total[/]", "", "", _size(shown["bytes"]), _total(shown))
    console.print(table)
    for kind, other in shown["elsewhere"].items():
        console.print(f"on {kind}: {_total(other)} ({other['source']})", highlight=False)
    for name, row in shown["phases"].items():
        for prompt in row.get("prompts", []):
            console.print(f"{Phase(name).letter} prompt: {prompt}", highlight=False)
    print(json.dumps(shown))


def _size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _total(estimate: dict) -> str:
    """The total time, and which phases it leaves out for want of a measured figure."""
    if estimate["seconds"] is None or not estimate["not_measured"]:
        return _duration(estimate["seconds"])
    return f"{_duration(estimate['seconds'])} + {' and '.join(estimate['not_measured'])} (not measured)"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.0f} s"


def _phase_command(phases: frozenset[Phase], help_text: str):
    def command(
        vocab: RunVocab = None, n: opt.MadeN = None, out: opt.Out = "runs/datagen", models: RunModels = None,
        seed: opt.Seed = 0, sd_path: opt.SdPath = None, oracle_weights: opt.OracleWeights = None,
        device: opt.Device = "auto", bootstrap_n: opt.BootstrapN = None, train_steps: opt.TrainSteps = None,
        shard_size: opt.ShardSize = None, shard_mb: opt.ShardMb = None, batch_size: opt.BatchSize = None,
        executor: opt.ExecutorKind = "local", ray_address: opt.RayAddress = None, workers: opt.Workers = None,
        gpus_per_worker: opt.GpusPerWorker = None, cpus_per_worker: opt.CpusPerWorker = 1.0,
        encode_cpus: opt.EncodeCpus = 1.0, labeler: opt.Labeler = "grounding", dtype: opt.Dtype = None,
        compile: opt.Compile = False, pair_fraction: opt.PairFraction = 0.5, image_format: opt.ImageFormat = "jpg",
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (samples, shards, prompts, disk and "
                                                                "time from measured figures) and exit: no model is "
                                                                "loaded, nothing is written.")] = False,
    ):
        settings = opt.executor_settings(kind=executor, ray_address=ray_address, workers=workers,
                                         gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                         encode_cpus=encode_cpus)
        vocab, models = opt.made_settings(out, vocab, models, ("coco", "sd15"))
        config = opt.run_config(vocab=vocab, n=opt.made_n(out, n, 110000), out=out, models=models, seed=seed,
                                sd_path=sd_path,
                                oracle_weights=oracle_weights, device=device, bootstrap_n=bootstrap_n,
                                train_steps=train_steps, shard_size=shard_size, shard_mb=shard_mb,
                                batch_size=batch_size, labeler=labeler, dtype=dtype, compile=compile,
                                pair_fraction=pair_fraction, image_format=image_format)
        if dry_run:
            _print_plan(config, phases)
            return
        _execute(config, phases, settings)

    command.__doc__ = help_text
    return command


app.command("run")(_phase_command(ALL_PHASES, "Every phase the labeler needs: oracle bootstrap, grounding "
                                              "training, labelling (with --labeler attention: labelling only)."))
for _phase, _help in ((Phase.ORACLE, "Phase A: seen-class images labelled by the Mask R-CNN oracle."),
                      (Phase.TRAIN, "Phase B: train the grounding module on the oracle shards."),
                      (Phase.LABEL, "Phase C: generate and label the dataset with --labeler (the grounding module "
                                    "by default).")):
    app.command(_phase.command)(_phase_command(frozenset({_phase}), _help))


@app.command()
def prompts(vocab: opt.Vocab = "coco", n: Annotated[int, typer.Option(help="How many prompts.")] = 10,
            seed: opt.Seed = 0,
            phase: Annotated[str, typer.Option(help="label (all classes) or oracle (seen).")] = "label",
            start: Annotated[int, typer.Option(help="First sample index.")] = 0):
    """Print the deterministic prompt specs (JSON lines) that a run would use."""
    from pipeline.config import resolve_vocabulary
    from stages.prompts import prompt_specs

    vocabulary = resolve_vocabulary(vocab)
    if phase not in (Phase.LABEL, Phase.ORACLE):
        raise ConfigError(f"--phase must be label or oracle, not '{phase}'")
    classes = vocabulary.seen if phase == Phase.ORACLE else vocabulary.classes
    for spec in prompt_specs(vocabulary, classes, phase, seed, range(start, start + n)):
        print(json.dumps(spec.to_dict()))
