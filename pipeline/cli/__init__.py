"""The ``datagen`` command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from pipeline.config import ConfigError, RunConfig, load_preset, resolve_vocabulary
from pipeline.inspect.card import write_card
from pipeline.dataset.manifest import DATA_DIR, ORACLE_DIR, check_output, output_lock, prepare_output, summarize
from pipeline.run.executors import ExecutionReport, ExecutorSettings, make_executor
from pipeline.cli import inspect as inspect_commands
from pipeline.run.phases import PhaseError, check_earlier_phases, oracle_tasks, recover_interrupted_training, \
    run_label_phase, run_oracle_phase, run_train_phase, training_is_current
from pipeline.run.plan import errored_samples, pending, plan_shards
from pipeline.cli.progress import progress_bar
from pipeline.dataset.reader import WIDS_INDEX, write_wids_index
from pipeline.run.runtime import Runtime
from pipeline.dataset.shards import finished_stats
from pipeline.dataset.sizing import samples_per_shard
from pipeline.run.workers import ShardWorker
from pipeline.cli.zs3 import zs3
from stages.prompts import prompt_specs
from stages.vocab import VocabularyError
from stages.weights import WeightsMissingError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Synthetic semantic segmentation datasets from Stable Diffusion (Grounded Diffusion).")
console = Console(stderr=True, soft_wrap=True)
eval_app = typer.Typer(help="Evaluate the grounding module or the dataset.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
eval_app.command("zs3")(zs3)

Vocab = Annotated[str, typer.Option(help="Vocabulary: voc, voc-split1, coco, or a YAML file.")]
N = Annotated[int, typer.Option(help="Samples in the labelled dataset (phase C).")]
Out = Annotated[Path, typer.Option(help="Output folder (created; a rerun resumes it).")]
Models = Annotated[str, typer.Option(help="Model preset: sd15 (real weights), tiny (offline), or a YAML file.")]
Seed = Annotated[int, typer.Option(help="Run seed: same config and seed give the same samples.")]
SdPath = Annotated[str | None, typer.Option(help="Stable Diffusion hub id or local diffusers folder.")]
OracleWeights = Annotated[str | None, typer.Option(help="Mask R-CNN state dict (.pth/.safetensors) or COCO_V1.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")]
Opt = Annotated[int | None, typer.Option()]
ExecutorKind = Annotated[str, typer.Option("--executor", help="local (in this process) or ray.")]
RayAddress = Annotated[str | None, typer.Option(help="Ray cluster to join (auto, ray://host:port); implies "
                                                "--executor ray. Without it, ray starts a local instance.")]
Workers = Annotated[int | None, typer.Option(help="Ray model workers (default: one per GPU, else per CPU).")]
GpusPerWorker = Annotated[float | None, typer.Option(help="GPUs per Ray model worker (default 1 with GPUs, else 0).")]
CpusPerWorker = Annotated[float, typer.Option(help="CPUs per Ray model worker.")]
EncodeCpus = Annotated[float, typer.Option(help="CPUs per Ray shard encoding/writing task (holds no GPU).")]


def _config(vocab, n, out, models, seed, sd_path, oracle_weights, device, bootstrap_n, train_steps,
            shard_size, batch_size) -> RunConfig:
    preset = load_preset(models, {"sd": sd_path, "oracle_weights": oracle_weights, "bootstrap_n": bootstrap_n,
                                  "shard_size": shard_size, "batch_size": batch_size,
                                  "train": {"steps": train_steps}})
    resolve_vocabulary(vocab)  # fail early on a bad vocabulary
    try:
        return RunConfig(vocab=vocab, out=out, preset_name=models, preset=preset, seed=seed, n=n, device=device)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--{'-'.join(str(p) for p in first['loc'])}: {first['msg']}") from err


def _sized(config: RunConfig, shard_size: int | None, shard_mb: float | None) -> RunConfig:
    """The config with --shard-mb converted to samples per shard (from its image size and format)."""
    if shard_mb is None:
        return config
    if shard_size is not None:
        raise ConfigError("pass --shard-size or --shard-mb, not both")
    if shard_mb <= 0:
        raise ConfigError(f"--shard-mb must be greater than 0, not {shard_mb}")
    size = samples_per_shard(shard_mb, config.preset.image_size, config.image_format)
    return config.model_copy(update={"preset": config.preset.model_copy(update={"shard_size": size})})


def _executor_settings(kind, ray_address, workers, gpus_per_worker, cpus_per_worker, encode_cpus) -> ExecutorSettings:
    try:
        return ExecutorSettings(kind="ray" if ray_address else kind, ray_address=ray_address, workers=workers,
                                gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                                encode_cpus=encode_cpus)
    except ValidationError as err:
        first = err.errors()[0]
        flag = {"kind": "executor"}.get(str(first["loc"][0]), str(first["loc"][0]).replace("_", "-"))
        raise ConfigError(f"--{flag}: {first['msg']}") from err


def _pending_work(config: RunConfig, phases: set[str]) -> bool:
    work = "oracle" in phases and pending(oracle_tasks(config))
    work = work or ("train" in phases and not training_is_current(config))
    return bool(work or ("label" in phases and pending(plan_shards("label", config.n, config.preset.shard_size,
                                                                   config.out / DATA_DIR))))


def _execute(config: RunConfig, phases: set[str], settings: ExecutorSettings) -> None:
    started = time.time()
    check_output(config, labelling="label" in phases)
    if not _pending_work(config, phases):
        console.print(f"[green]dataset is complete[/]: nothing to do in {config.out}")
        if "label" in phases:
            _write_card_and_index(config, only_if_stale=True)
        _print_summary(config, phases)
        return
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
    where = f": dataset in {config.out / DATA_DIR}, card {config.out / 'README.md'}" if "label" in phases else ""
    console.print(f"done in {time.time() - started:.1f} s{where}", highlight=False)
    if label_report is not None:
        _stop_on_failed_shards(label_report, "C")
    _exit_on_errors(config, phases)


def _run_phases(config: RunConfig, phases: set[str], settings: ExecutorSettings) -> ExecutionReport | None:
    """Phases A, B, C as asked; phase C's report (None without it) for the caller to judge."""
    runtime = Runtime(config)
    runtime.check_weights(oracle="oracle" in phases, grounding="label" in phases and "train" not in phases)
    console.print(f"datagen: preset [bold]{config.preset_name}[/] on {runtime.device}, output {config.out}")
    executor = make_executor(settings, worker=ShardWorker(config, runtime))
    executor.check()
    prepare_output(config, runtime.sd_source(), runtime.oracle_source(), labelling="label" in phases)
    with progress_bar(console) as progress:
        if "oracle" in phases:
            _stop_on_failed_shards(run_oracle_phase(config, executor, progress), "A")
        if "train" in phases:
            record = run_train_phase(config, runtime, progress)
            if not record.get("skipped"):
                console.print(f"grounding module: loss {record['first_loss']:.4f} -> "
                              f"{record['last_loss']:.4f} in {record['steps']} steps")
        if "label" not in phases:
            return None
        report = run_label_phase(config, executor, progress)
    _write_card_and_index(config)
    return report


def _write_card_and_index(config: RunConfig, only_if_stale: bool = False) -> None:
    """Write the dataset card and the wids index; ``only_if_stale``: only when either is missing or
    older than the manifest or a shard's stats (a run killed after its last shard wrote neither)."""
    data = config.out / DATA_DIR
    if only_if_stale:
        sources = [config.out / "manifest.json", *data.glob("shard-*.stats.json")]
        newest = max(p.stat().st_mtime for p in sources if p.exists())
        if all(p.exists() and p.stat().st_mtime >= newest for p in (config.out / "README.md", data / WIDS_INDEX)):
            return
    write_card(config.out)
    write_wids_index(data)


def _stop_on_failed_shards(report: ExecutionReport, phase: str) -> None:
    """Exit 1 after naming every shard that failed all its retries; later phases do not run."""
    if report.failed_shards:
        for sid, err in sorted(report.failed_shards.items()):
            console.print(f"[red]phase {phase}: shard {sid} failed[/]: {err}", highlight=False)
        console.print("rerun the same command to retry the failed shards; finished shards are kept")
        raise typer.Exit(1)


def _exit_on_errors(config: RunConfig, phases: set[str]) -> None:
    """Exit 1 when samples raised (not filtered: raised) in the phases run; a rerun retries them."""
    folders = [config.out / d for phase, d in (("oracle", ORACLE_DIR), ("label", DATA_DIR)) if phase in phases]
    errored = sum(errored_samples(stats) for folder in folders for stats in finished_stats(folder))
    if errored:
        console.print(f"[red]{errored} samples raised errors[/] (reasons in the shard stats); rerun the same "
                      "command to retry them")
        raise typer.Exit(1)


def _print_summary(config: RunConfig, phases: set[str]) -> None:
    folder, label = (config.out / DATA_DIR, "dataset") if "label" in phases else (config.out / ORACLE_DIR, "oracle data")
    summary = summarize(folder)
    vocab = config.vocabulary()
    table = Table(title=f"{label}: {summary['written']} samples in {summary['shards']} shards ({folder})")
    table.add_column("class")
    table.add_column("split")
    table.add_column("instances", justify="right")
    for c in vocab.classes:
        if c.name in summary["class_instances"]:
            table.add_row(c.name, "seen" if c.seen else "unseen", str(summary["class_instances"][c.name]))
    console.print(table)
    failed = ", ".join(f"{k}: {v}" for k, v in sorted(summary["failed"].items())) or "none"
    console.print(f"failed samples by reason: {failed}")
    print(json.dumps({"out": str(config.out), "folder": str(folder), **summary}))


def _phase_command(phases: set[str], help_text: str):
    def command(
        vocab: Vocab = "coco", n: N = 110000, out: Out = Path("runs/datagen"), models: Models = "sd15",
        seed: Seed = 0, sd_path: SdPath = None, oracle_weights: OracleWeights = None, device: Device = "auto",
        bootstrap_n: Annotated[int | None, typer.Option(help="Oracle samples for training (phase A).")] = None,
        train_steps: Annotated[int | None, typer.Option(help="Grounding training steps (phase B).")] = None,
        shard_size: Annotated[int | None, typer.Option(help="Samples per shard.")] = None,
        shard_mb: Annotated[float | None, typer.Option(help="Target shard size in MB (sets the samples per "
                                                               "shard from the image size).")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Generation batch size.")] = None,
        executor: ExecutorKind = "local", ray_address: RayAddress = None, workers: Workers = None,
        gpus_per_worker: GpusPerWorker = None, cpus_per_worker: CpusPerWorker = 1.0, encode_cpus: EncodeCpus = 1.0,
    ):
        settings = _executor_settings(executor, ray_address, workers, gpus_per_worker, cpus_per_worker, encode_cpus)
        config = _config(vocab, n, out, models, seed, sd_path, oracle_weights, device, bootstrap_n,
                         train_steps, shard_size, batch_size)
        _execute(_sized(config, shard_size, shard_mb), phases, settings)

    command.__doc__ = help_text
    return command


app.command("run")(_phase_command({"oracle", "train", "label"},
                                  "Every phase: oracle bootstrap, grounding training, labelling."))
app.command("generate")(_phase_command({"oracle"}, "Phase A: seen-class images labelled by the Mask R-CNN oracle."))
app.command("train")(_phase_command({"train"}, "Phase B: train the grounding module on the oracle shards."))
app.command("label")(_phase_command({"label"}, "Phase C: generate and label the dataset with the grounding module."))



for _inspect in (inspect_commands.show, inspect_commands.validate, inspect_commands.stats):
    app.command()(_inspect)


@app.command()
def prompts(vocab: Vocab = "coco", n: Annotated[int, typer.Option(help="How many prompts.")] = 10,
            seed: Seed = 0, phase: Annotated[str, typer.Option(help="label (all classes) or oracle (seen).")] = "label",
            start: Annotated[int, typer.Option(help="First sample index.")] = 0):
    """Print the deterministic prompt specs (JSON lines) that a run would use."""
    vocabulary = resolve_vocabulary(vocab)
    if phase not in ("label", "oracle"):
        raise ConfigError(f"--phase must be label or oracle, not '{phase}'")
    classes = vocabulary.seen if phase == "oracle" else vocabulary.classes
    for spec in prompt_specs(vocabulary, classes, phase, seed, range(start, start + n)):
        print(json.dumps(spec.to_dict()))


from pipeline.cli.grounding import register as _register_grounding  # noqa: E402 - needs the names above

_register_grounding(app, eval_app)


def _quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except (ConfigError, VocabularyError, WeightsMissingError, PhaseError) as err:
        console.print(f"[red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


