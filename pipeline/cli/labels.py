"""`datagen eval labels`: every labeler against the masks of an annotated folder (pipeline/evaluate/labels.py)."""

import json
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli import options as opt
from pipeline.cli.app import console, eval_app
from pipeline.cli.grounding import add_group_rows, fmt_score
from pipeline.cli.progress import progress_bar
from pipeline.cli.reports import check_report
from pipeline.dataset.layout import EVAL_DIR
from stages.errors import ConfigError

Vocab, Models = opt.made_vocab("voc"), opt.made_models("sd15")


@eval_app.command("labels")
def eval_labels(
    real: Annotated[str, typer.Option(help="Annotated images, a local folder: VOC layout (JPEGImages/, "
                                           "SegmentationClass/, ImageSets/Segmentation/) or COCO (annotations/, "
                                           "val2017/).")],
    vocab: Vocab = None, out: opt.Out = "runs/datagen", models: Models = None, seed: opt.Seed = 0,
    sd_path: opt.SdPath = None, device: opt.Device = "auto", batch_size: opt.BatchSize = None,
    labeler: Annotated[str, typer.Option(help="Which labeler to score: grounding (the checkpoint in --out), "
                                              "attention (cross-attention maps, the preset's attention "
                                              "settings), consensus (where both agree), or all, on the same "
                                              "images.")] = "grounding",
    real_format: Annotated[str, typer.Option(help="auto, voc or coco.")] = "auto",
    split: Annotated[str | None, typer.Option(help="Split to score (VOC: val; COCO: val2017).")] = None,
    n: Annotated[int | None, typer.Option(help="Score the split's first N images (default: all).")] = None,
    json_path: Annotated[str | None, typer.Option(
        "--json", help="Report file, a path or URL (default OUT/eval/labels.json).")] = None,
):
    """Labels vs truth: each labeler's IoU against annotated masks, seen and unseen classes apart, and
    how many pixels it gives a prompted class the image does not show."""
    from pipeline.dataset.atomic import make_folder, write_json_atomic
    from pipeline.dataset.location import location
    from pipeline.evaluate.labels import check_dataset, evaluate_labels, real_images
    from pipeline.evaluate.protocol1 import labelers_of
    from pipeline.runtime import Runtime
    from stages.labelers import labeler_class

    labelers = labelers_of(labeler)
    root = opt.local_folder("--real", real, "its images are read one by one")
    vocab, models = opt.made_settings(out, vocab, models, ("voc", "sd15"))
    config = opt.run_config(vocab=vocab, out=out, models=models, seed=seed, sd_path=sd_path, device=device,
                            batch_size=batch_size)
    if n is not None and n < 1:
        raise ConfigError(f"--n must be at least 1, not {n}")
    check_dataset(config)
    images = real_images(root, real_format, split, config.vocabulary(), config.preset.image_size)
    total = len(images) if n is None else min(n, len(images))
    target = location(json_path) if json_path else config.out / EVAL_DIR / "labels.json"
    real_data = {"folder": str(root), "split": images.name}
    check_report(target, {"vocab": config.vocab, "preset": config.preset_name, "seed": config.seed,
                          "labelers": list(labelers), "images": total, "real": real_data,
                          "classes": [c.name for c in config.vocabulary().classes]})
    runtime = Runtime(config)
    classes = tuple(labeler_class(name) for name in labelers)
    runtime.check_weights(oracle=False, grounding=any(c.trained for c in classes), labelers=classes)
    with progress_bar(console, unit="images") as progress:
        bar = progress.add_task("labels vs truth", total=total)
        report = evaluate_labels(config, runtime, images, labelers, n, lambda k: progress.advance(bar, k))
    report = {"vocab": config.vocab} | report | {"real": real_data}
    make_folder(target.parent)
    write_json_atomic(target, report)
    console.print(labels_table(report))
    console.print(f"report: {target}", highlight=False)
    print(json.dumps(report))


def labels_table(report: dict) -> Table:
    """Per class each labeler's IoU against the truth; each labeler's mIoU seen and unseen, on one-class and
    multi-class images, and its absent-class pixels."""
    labelers, scores = report["labelers"], report["scores"]
    note = report["zero_shot_note"]
    table = Table(title=f"Labels vs truth: {' and '.join(labelers)} on {report['scored_images']} annotated images "
                        f"({report['real']['split']})",
                  caption=f"[bold red]{note}[/]" if report["zero_shot"] is False else note)
    table.add_column("class")
    table.add_column("split")
    for name in labelers:
        table.add_column(f"IoU {name}", justify="right")
    table.add_column("images", justify="right")
    for c in report["classes"]:
        table.add_row(c["name"], c["split"], *(fmt_score(c["iou"][name]) for name in labelers), str(c["images"]))
    for split in ("seen", "unseen"):
        table.add_row(f"[bold]mIoU {split}[/]", "", *(f"[bold]{fmt_score(scores[name][f'miou_{split}'])}[/]"
                                                     for name in labelers), "")
    add_group_rows(table, report, "images", 1)
    table.add_row("absent-class pixels", "", *(fmt_score(scores[name]["absent_pixels"]) for name in labelers), "")
    return table
