"""The grounding module's commands: `datagen train-annotated` and `datagen eval grounding`."""

import json
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli import options as opt
from pipeline.cli.app import app, console, eval_app
from pipeline.cli.progress import progress_bar
from pipeline.cli.reports import check_report
from pipeline.dataset.layout import EVAL_DIR

AnnotatedVocab, EvalVocab, Models = opt.made_vocab("voc"), opt.made_vocab("coco"), opt.made_models("sd15")
Data = Annotated[str, typer.Option(help="VOC-layout local folder: JPEGImages/, SegmentationClass/, "
                                        "ImageSets/Segmentation/.")]


@app.command("train-annotated")
def train_annotated(
    data: Data, vocab: AnnotatedVocab = None, out: opt.Out = "runs/datagen", models: Models = None,
    seed: opt.Seed = 0, sd_path: opt.SdPath = None, device: opt.Device = "auto",
    split: Annotated[str, typer.Option(help="Image set to train on.")] = "train",
    val_split: Annotated[str, typer.Option(help="Image set to validate on ('' for none).")] = "val",
    train_steps: Annotated[int | None, typer.Option(help="Optimizer steps.")] = None,
    train_on_unseen: Annotated[bool, typer.Option(
        "--train-on-unseen", help="Make unseen-class pixels targets too (default: ignored). The checkpoint, and "
                                  "the datasets, cards and scores made with it, are then NOT zero-shot.")] = False,
):
    """Train the grounding module on real annotated images (VOC layout) instead of oracle shards.

    Mask values name classes (VOC's, or the folder's labels.txt, one name per line from the
    background's 0) and map to the vocabulary by name; 255 is not scored, nor are the unseen classes
    unless --train-on-unseen (zero-shot: an unseen class is never a target). A killed run resumes from
    its last checkpoint when rerun with the same flags."""
    from pipeline.dataset import zero_shot
    from pipeline.dataset.atomic import make_folder
    from pipeline.dataset.manifest import check_output, check_writable, output_lock
    from pipeline.dataset.voc import voc_images
    from pipeline.runtime import Runtime
    from pipeline.training.job import train_on_annotated

    data = opt.local_folder("--data", data, "its images are read many times over")
    vocab, models = opt.made_settings(out, vocab, models, ("voc", "sd15"))
    config = opt.run_config(vocab=vocab, out=out, models=models, seed=seed, sd_path=sd_path, device=device,
                            train_steps=train_steps)
    check_output(config, labelling=False)
    runtime = Runtime(config)
    runtime.check_weights(oracle=False, grounding=False)
    for name in filter(None, (split, val_split)):  # a bad folder is one line, before --out exists or a bar is drawn
        voc_images(data, name)
    check_writable(config.out)
    make_folder(config.out)
    with output_lock(config), progress_bar(console) as progress:
        record = train_on_annotated(config, runtime, data, split, val_split or None, progress, train_on_unseen)
    last = record["validation"][-1]["miou"] if record["validation"] else None
    console.print(f"grounding module: loss {record['first_loss']:.4f} -> {record['last_loss']:.4f} in "
                  f"{record['steps']} steps" + (f", validation mIoU {last:.3f}" if last is not None else ""))
    if not record["zero_shot"]:
        console.print(f"[yellow]{zero_shot.NOT_ZERO_SHOT}[/]", highlight=False)
    print(json.dumps({k: record[k] for k in ("steps", "first_loss", "last_loss", "seconds", "zero_shot")}
                     | {"val_miou": last}))


@eval_app.command("grounding")
def eval_grounding(
    vocab: EvalVocab = None, out: opt.Out = "runs/datagen", models: Models = None,
    seed: opt.Seed = 0, sd_path: opt.SdPath = None, oracle_weights: opt.OracleWeights = None,
    device: opt.Device = "auto",
    n: Annotated[int, typer.Option(help="Test images to generate (seen and unseen classes).")] = 200,
    json_path: Annotated[str | None, typer.Option(
        "--json", help="Report file, a path or URL (default OUT/eval/protocol1.json).")] = None,
    batch_size: opt.BatchSize = None,
    labeler: Annotated[str, typer.Option(help="Which labeler to score: grounding (the checkpoint in --out), "
                                              "attention (cross-attention maps, the preset's attention "
                                              "settings), consensus (where both agree), or all, on the same "
                                              "images.")] = "grounding",
):
    """Protocol I: mIoU of a labeler (or all) against the oracle, seen and unseen classes apart."""
    from pipeline.dataset.atomic import make_folder, write_json_atomic
    from pipeline.dataset.location import location
    from pipeline.evaluate.protocol1 import evaluate_labelers, labelers_of
    from pipeline.runtime import Runtime
    from stages.labelers import labeler_class

    labelers = labelers_of(labeler)
    vocab, models = opt.made_settings(out, vocab, models, ("coco", "sd15"))
    config = opt.run_config(vocab=vocab, n=n, out=out, models=models, seed=seed, sd_path=sd_path,
                            oracle_weights=oracle_weights, device=device, batch_size=batch_size)
    target = location(json_path) if json_path else config.out / EVAL_DIR / "protocol1.json"
    settings = {"vocab": config.vocab, "preset": config.preset_name, "seed": config.seed, "labelers": list(labelers),
                "images": n, "classes": [c.name for c in config.vocabulary().classes]}
    check_report(target, settings)
    runtime = Runtime(config)
    classes = tuple(labeler_class(name) for name in labelers)
    runtime.check_weights(oracle=True, grounding=any(c.trained for c in classes), labelers=classes)
    with progress_bar(console) as progress:
        bar = progress.add_task("Protocol I", total=n)
        report = {"vocab": config.vocab} | evaluate_labelers(config, runtime, n, labelers,
                                                             lambda k: progress.advance(bar, k))
    make_folder(target.parent)
    write_json_atomic(target, report)
    console.print(protocol1_table(report))
    console.print(f"report: {target}", highlight=False)
    print(json.dumps(report))


def fmt_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def protocol1_table(report: dict) -> Table:
    """One table: per class, each labeler's IoU against the oracle; then each labeler's mIoU seen and unseen."""
    labelers, scores = report["labelers"], report["scores"]
    zero_shot = report.get("zero_shot")
    note = report.get("zero_shot_note", "")
    table = Table(title=f"Protocol I: {' and '.join(labelers)} vs oracle on {report['images']} generated images",
                  caption=f"[bold red]{note}[/]" if zero_shot is False else note)
    table.add_column("class")
    table.add_column("split")
    for labeler in labelers:
        table.add_column(f"IoU {labeler}", justify="right")
    table.add_column("pairs", justify="right")
    table.add_column("oracle missed", justify="right")
    for c in report["classes"]:
        table.add_row(c["name"], c["split"], *(fmt_score(c["iou"][labeler]) for labeler in labelers), str(c["pairs"]),
                      str(c["oracle_missed"]))
    for split in ("seen", "unseen"):
        label = f"mIoU {split}" + (" (NOT zero-shot)" if split == "unseen" and zero_shot is False else "")
        table.add_row(f"[bold]{label}[/]", "", *(f"[bold]{fmt_score(scores[labeler][f'miou_{split}'])}[/]"
                                                 for labeler in labelers), "", "")
    add_group_rows(table, report, "prompts", 2)
    return table


def add_group_rows(table: Table, report: dict, what: str, trailing: int) -> None:
    """Rows of each labeler's mIoU seen / unseen on one-class and on multi-class images (``by_classes``)."""
    for group, label in (("one_class", "one-class"), ("multi_class", "multi-class")):
        entry = report["by_classes"][group]
        pairs = (entry["scores"][name] for name in report["labelers"])
        table.add_row(f"mIoU seen / unseen, {label} {what} ({entry['images']})", "",
                      *(f"{fmt_score(s['miou_seen'])} / {fmt_score(s['miou_unseen'])}" for s in pairs),
                      *[""] * trailing)
