"""CLI commands of the grounding module: ``datagen train-annotated`` and ``datagen eval grounding``."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pipeline.training.annotated import AnnotatedDataError, voc_index
from pipeline.config import ConfigError
from pipeline.dataset.manifest import check_output, output_lock
from pipeline.cli.progress import progress_bar
from pipeline.run.runtime import Runtime
from pipeline.dataset.shards import write_json_atomic

Data = Annotated[Path, typer.Option(help="VOC-layout folder: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/.")]


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    from pipeline import cli

    @app.command("train-annotated")
    def train_annotated(
        data: Data, vocab: cli.Vocab = "voc", out: cli.Out = Path("runs/datagen"), models: cli.Models = "sd15",
        seed: cli.Seed = 0, sd_path: cli.SdPath = None, device: cli.Device = "auto",
        split: Annotated[str, typer.Option(help="Image set to train on.")] = "train",
        val_split: Annotated[str, typer.Option(help="Image set to validate on ('' for none).")] = "val",
        train_steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    ):
        """Train the grounding module on real annotated images (VOC layout) instead of oracle shards.

        Classes are the vocabulary's, in order: mask value i is its i-th class, 0 background, 255 not
        scored. A killed run resumes from its last checkpoint when rerun with the same flags."""
        config = cli._config(vocab, 1, out, models, seed, sd_path, None, device, None, train_steps, None, None)
        check_output(config, labelling=False)
        from pipeline.training.job import train_on_annotated

        runtime = Runtime(config)
        runtime.check_weights(oracle=False, grounding=False)
        try:  # a bad folder is one line, before --out exists or a bar is drawn
            for name in filter(None, (split, val_split)):
                voc_index(data, name)
        except AnnotatedDataError as err:
            raise ConfigError(str(err)) from err
        config.out.mkdir(parents=True, exist_ok=True)
        with output_lock(config), progress_bar(cli.console) as progress:
            try:
                record = train_on_annotated(config, runtime, data, split, val_split or None, progress)
            except AnnotatedDataError as err:  # an image or mask that cannot be read
                raise ConfigError(str(err)) from err
        last = record["validation"][-1]["miou"] if record["validation"] else None
        cli.console.print(f"grounding module: loss {record['first_loss']:.4f} -> {record['last_loss']:.4f} in "
                          f"{record['steps']} steps" + (f", validation mIoU {last:.3f}" if last is not None else ""))
        print(json.dumps({k: record[k] for k in ("steps", "first_loss", "last_loss", "seconds")} | {"val_miou": last}))

    @eval_app.command("grounding")
    def eval_grounding(
        vocab: cli.Vocab = "coco", out: cli.Out = Path("runs/datagen"), models: cli.Models = "sd15",
        seed: cli.Seed = 0, sd_path: cli.SdPath = None, oracle_weights: cli.OracleWeights = None,
        device: cli.Device = "auto",
        n: Annotated[int, typer.Option(help="Test images to generate (seen and unseen classes).")] = 200,
        json_path: Annotated[Path | None, typer.Option("--json", help="Report file (default OUT/eval/protocol1.json).")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Generation batch size.")] = None,
    ):
        """Protocol I: mIoU of the grounding module against the oracle, seen and unseen classes apart."""
        from pipeline.evaluate.protocol1 import evaluate_grounding

        config = cli._config(vocab, n, out, models, seed, sd_path, oracle_weights, device, None, None, None, batch_size)
        runtime = Runtime(config)
        runtime.check_weights(oracle=True, grounding=True)
        with progress_bar(cli.console) as progress:
            bar = progress.add_task("Protocol I", total=n)
            report = evaluate_grounding(config, runtime, n, lambda k: progress.advance(bar, k))
        target = json_path or config.out / "eval" / "protocol1.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, report)
        cli.console.print(protocol1_table(report))
        cli.console.print(f"report: {target}", highlight=False)
        print(json.dumps(report))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def protocol1_table(report: dict) -> Table:
    table = Table(title=f"Protocol I: grounding vs oracle on {report['images']} generated images")
    for column, justify in (("class", "left"), ("split", "left"), ("IoU", "right"), ("pairs", "right"),
                            ("oracle missed", "right")):
        table.add_column(column, justify=justify)
    for c in report["classes"]:
        table.add_row(c["name"], c["split"], _fmt(c["iou"]), str(c["pairs"]), str(c["oracle_missed"]))
    table.add_row("[bold]mIoU seen[/]", "", f"[bold]{_fmt(report['miou_seen'])}[/]", "", "")
    table.add_row("[bold]mIoU unseen[/]", "", f"[bold]{_fmt(report['miou_unseen'])}[/]", "", "")
    return table
