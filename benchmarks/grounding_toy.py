"""Proof that the grounding module learns: train it on procedurally generated shapes, measure mIoU.

Writes a VOC-layout dataset of coloured geometric shapes (testbed/toy_shapes.py), fits the tiny
preset's random VAE to the training images (testbed/toy_vae.py says why), trains the grounding
module through the real annotated-images path (VAE encode, noise to the capture step, one guided
pass of the random tiny UNet, ground-truth masks as targets), and reports mIoU (background included)
on held-out images against the all-background baseline, with CPU time.

    python benchmarks/grounding_toy.py --out runs/bench-grounding
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.voc import voc_images
from pipeline.runtime import Runtime
from pipeline.training.annotated import annotated_validation_batches
from pipeline.training.job import train_on_annotated
from stages.grounding.metrics import BACKGROUND, IoU
from testbed.toy_shapes import SHAPES, write_toy_dataset
from testbed.toy_vae import fit_vae

console = Console(stderr=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def background_baseline(root: Path, config: RunConfig, timestep: int) -> float:
    """mIoU of predicting background everywhere on the validation images."""
    iou = IoU()
    for batch in annotated_validation_batches(voc_images(root, "val"), config.vocabulary(), config.preset.image_size,
                                              timestep, 16, config.seed):
        for b, names in enumerate(batch["names"]):
            truth = batch["targets"][b, : len(names)].bool().numpy()
            iou.add(BACKGROUND, np.ones(truth.shape[1:], bool), ~truth.any(0))
            for j, name in enumerate(names):
                iou.add(name, np.zeros(truth.shape[1:], bool), truth[j])
    return iou.mean()


def run(out: Path, n_train: int = 400, n_val: int = 100, steps: int = 600, batch_size: int = 8,
        lr: float = 1e-3, seed: int = 0, validate_every: int = 100, vae_steps: int = 200) -> dict:
    started, cpu_started = time.time(), cpu_seconds()
    data = write_toy_dataset(out / "toy-voc", n_train, n_val, seed=seed)
    tiny = Runtime(RunConfig(vocab="voc", out=out / "run", preset_name="tiny", preset=load_preset("tiny"), n=1))
    fitted = fit_vae(Path(tiny.sd_source()), [i.image for i in voc_images(data, "train")], out / "tiny-fitted-vae",
                     steps=vae_steps, seed=seed)
    vae_cpu = cpu_seconds() - cpu_started
    preset = load_preset("tiny", {"sd": str(fitted), "oracle_weights": tiny.oracle_source(), "train": {
        "steps": steps, "batch_size": batch_size, "lr": lr, "validate_every": validate_every,
        "checkpoint_every": 100, "warmup_steps": 20, "schedule": "cosine"}})
    config = RunConfig(vocab=str(data / "vocab.yaml"), out=out / "run", preset_name="tiny", preset=preset,
                       seed=seed, n=1, device="cpu")
    runtime = Runtime(config)
    record = train_on_annotated(config, runtime, data, "train", "val")
    final = record["validation"][-1]
    report = {"miou": final["miou"], "per_class": final["per_class"],
              "all_background_miou": background_baseline(data, config, runtime.diffusion.capture_timestep),
              "first_loss": record["first_loss"], "last_loss": record["last_loss"],
              "validation_curve": [(v["step"], v["miou"]) for v in record["validation"]],
              "train_images": n_train, "val_images": n_val, "steps": steps, "batch_size": batch_size, "lr": lr,
              "wall_seconds": round(time.time() - started, 1), "cpu_seconds": round(cpu_seconds() - cpu_started, 1),
              "vae_fit_cpu_seconds": round(vae_cpu, 1), "vae_steps": vae_steps,
              "classes": list(SHAPES), "preset": "tiny (random UNet/VAE/CLIP weights)"}
    return report


def main(out: Annotated[Path, typer.Option(help="Working folder (dataset + run).")] = Path("runs/bench-grounding"),
         steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 600,
         n_train: Annotated[int, typer.Option(help="Training images.")] = 400,
         n_val: Annotated[int, typer.Option(help="Held-out images.")] = 100,
         vae_steps: Annotated[int, typer.Option(help="Steps fitting the tiny VAE.")] = 200,
         threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None):
    """Train the grounding module on toy shapes and report held-out mIoU and CPU time."""
    if threads:
        torch.set_num_threads(threads)
    report = run(out, n_train=n_train, n_val=n_val, steps=steps, vae_steps=vae_steps)
    report["threads"] = torch.get_num_threads()
    table = Table(title="grounding module on toy shapes (held-out images, tiny preset)")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in report["per_class"].items():
        table.add_row(name, f"{value:.3f}")
    table.add_row("[bold]mIoU[/]", f"[bold]{report['miou']:.3f}[/]")
    table.add_row("all-background mIoU", f"{report['all_background_miou']:.3f}")
    console.print(table)
    console.print(f"{report['steps']} steps in {report['wall_seconds']} s wall, {report['cpu_seconds']} s CPU")
    print(json.dumps(report))


if __name__ == "__main__":
    typer.run(main)
