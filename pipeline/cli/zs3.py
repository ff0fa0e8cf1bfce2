"""``datagen eval zs3``: the command line of the ZS3 evaluation (see pipeline/evaluate/zs3/run.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.progress import Progress

from pipeline.cli.app import console, eval_app
from pipeline.cli.options import local_folder, made_settings
from pipeline.cli.progress import progress_bar
from pipeline.evaluate.zs3.modes import MODES
from stages.errors import DatagenError


@eval_app.command("zs3")
def zs3(
    real: Annotated[str, typer.Option(help="Real data with ground truth, a local folder: VOC (VOCdevkit/VOC2012) "
                                           "or COCO (annotations/, train2017/, val2017/).")],
    synthetic: Annotated[str | None, typer.Option(help="Synthetic data: a datagen output folder, a folder of shards, "
                                                       "a .txt list of shards, or a shard URL/pattern.")] = None,
    vocab: Annotated[str | None, typer.Option(
        help="Vocabulary and seen/unseen split: voc, voc-split1, coco, or a YAML (default: the one the --synthetic "
             "dataset was made with, else voc).", show_default=False)] = None,
    mode: Annotated[str | None, typer.Option(help=f"Training data: {', '.join(MODES)} (default: real-seen+synthetic "
                                                  "with --synthetic, else real-seen).")] = None,
    out: Annotated[str, typer.Option(help="Local output folder for the checkpoint and the report (a rerun "
                                          "resumes).")] = "runs/zs3",
    segmenter: Annotated[str, typer.Option(help="Segmenter preset: standard (DeepLabV3-ResNet101, ImageNet "
                                                "backbone), tiny (CPU tests), or a YAML file.")] = "standard",
    steps: Annotated[int | None, typer.Option(help="Training steps (overrides the preset).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step over all processes.")] = None,
    real_format: Annotated[str, typer.Option(help="auto, voc or coco.")] = "auto",
    train_split: Annotated[str | None, typer.Option(help="Real training split (VOC: train, train_aug; "
                                                         "COCO: train2017).")] = None,
    val_split: Annotated[str | None, typer.Option(help="Real evaluation split (VOC: val; COCO: val2017).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (under torchrun: one GPU per process).")]
    = "auto",
    seed: Annotated[int, typer.Option(help="Seed of initialisation, sampling and augmentation.")] = 0,
):
    """ZS3 benchmark: train a standard segmenter, report seen / unseen mIoU and their harmonic mean."""
    from pipeline.evaluate.zs3.config import load_segmenter_preset
    from pipeline.evaluate.zs3.run import Zs3Request, run_zs3

    real, out = local_folder("--real", real, "it is read many times over"), local_folder(
        "--out", out, "its checkpoints are resumed in place; copy report.json to a store afterwards")
    if synthetic is not None and "{" not in synthetic:  # a dataset folder: its vocabulary and split
        vocab = made_settings(synthetic, vocab, None, ("voc", ""), flag="--synthetic")[0]
    vocab = vocab or "voc"
    preset = load_segmenter_preset(segmenter, {"steps": steps, "batch_size": batch_size})
    request = Zs3Request(vocab=vocab, real=real, out=out, preset_name=segmenter, preset=preset,
                         synthetic=synthetic, mode=mode, real_format=real_format, train_split=train_split,
                         val_split=val_split, device=device, seed=seed)
    progress = progress_bar(console, unit="steps")  # run_zs3 starts it once the inputs are usable
    try:
        report = run_zs3(request, console, progress)
    except DatagenError:  # the error alone is printed: no half-drawn bar above it
        for task in list(progress.task_ids):
            progress.remove_task(task)
        if progress.live.is_started:
            progress.live.stop()  # not progress.stop(): it would end the empty bar with a blank line
        raise
    except KeyboardInterrupt:
        _stop(progress)
        console.print(f"interrupted: the last checkpoint in {out} is kept; rerun the same command to resume")
        raise typer.Exit(130) from None
    finally:
        _stop(progress)
    if report is None:  # a torchrun process other than rank 0
        return
    summary = {k: report[k] for k in ("mode", "vocabulary", "metrics", "zero_shot")}
    print(json.dumps({"report": str(out / "report.json"), **summary, "training": {
        k: report["training"][k] for k in ("steps", "first_loss", "last_loss")}}))


def _stop(progress: Progress) -> None:
    """Stop the bar if it was started (rich prints a blank line when stopping one that never was)."""
    if progress.live.is_started:
        progress.stop()
