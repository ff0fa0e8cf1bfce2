"""Seconds per image of phase C's model work with each labeler, against plain generation.

Three measurements on the same prompts and seeds, one torch thread, after one warm-up pass each, taking
turns (the median pass of each is reported):
plain sampling (``Diffusion.generate``, nothing captured), the grounding labeler (a shard worker's
compute: sampling with the features captured at the capture step, the grounding module, masks and
filters) and the attention labeler (a shard worker's compute: sampling while the chosen cross- and
self-attention layers are recorded, maps, masks and filters). The grounding module is freshly
initialised: its cost does not depend on its training. Shard encoding and writing are not counted.

    python benchmarks/labelers.py [--models tiny] [--images 16] [--batch-size 4]
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import diffusers
import torch
import transformers
import typer

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.layout import Phase
from pipeline.dataset.plan import ShardTask
from pipeline.run.workers import ShardWorker
from pipeline.runtime import Runtime
from pipeline.training.job import new_trainer


def workers(models: str, vocab: str, images: int, batch_size: int, out: Path) -> dict[str, ShardWorker]:
    """A shard worker per labeler, sharing one runtime (the same loaded models)."""
    preset = load_preset(models, {"batch_size": batch_size, "shard_size": images})
    configs = {labeler: RunConfig(vocab=vocab, out=out, preset_name=models, preset=preset, n=images, labeler=labeler,
                                  device="cpu") for labeler in ("grounding", "attention")}
    runtime = Runtime(configs["grounding"])
    runtime.__dict__["grounding"] = new_trainer(configs["grounding"], runtime).module.eval()  # untrained: same cost
    result = {labeler: ShardWorker(config, runtime) for labeler, config in configs.items()}
    for w in result.values():
        w.load_models(Phase.LABEL)
    return result


def seconds_per_image(runs: dict, images: int, repeats: int) -> dict[str, float]:
    """Per run, the median seconds per image over ``repeats`` passes; the runs take turns in each pass,
    so load from other processes falls on all of them alike."""
    for run in runs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / images)
    return {name: statistics.median(t) for name, t in times.items()}


def main(models: Annotated[str, typer.Option(help="Model preset (tiny offline; world once built).")] = "tiny",
         vocab: Annotated[str, typer.Option(help="Vocabulary.")] = "voc",
         images: Annotated[int, typer.Option(help="Images per timed pass.")] = 16,
         batch_size: Annotated[int, typer.Option(help="Generation batch size.")] = 4,
         repeats: Annotated[int, typer.Option(help="Timed passes of each (after one warm-up pass).")] = 5):
    """Print seconds per image of plain generation and of each labeler, and the overhead of each."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    out = Path(tempfile.gettempdir()) / "datagen-bench-labelers"  # the workers' output folder: nothing is written
    task = ShardTask(Phase.LABEL, 0, 0, images, out)
    by_labeler = workers(models, vocab, images, batch_size, out)
    plain = by_labeler["grounding"].runtime.diffusion
    specs = by_labeler["grounding"].specs(task)

    def generate_only():
        for i in range(0, images, batch_size):
            plain.generate(specs[i:i + batch_size], capture_features=False)

    runs = {"plain generation": generate_only} | {f"{labeler} labeler": (lambda w=w: w.compute(task))
                                                  for labeler, w in by_labeler.items()}
    results = seconds_per_image(runs, images, repeats)
    assert not out.exists()  # compute only: encoding and writing are not measured
    base = results["plain generation"]
    report = [{"what": what, "s_per_image": round(s, 4), "vs_plain": round(s / base, 3)} for what, s in results.items()]
    steps = by_labeler["attention"].config.preset.steps
    print(f"{models} preset, {images} images in batches of {batch_size}, {steps} DDIM steps, 1 torch thread, "
          f"median of {repeats} timed passes")
    for r in report:
        print(f"{r['what']:18} {r['s_per_image']:8.4f} s/image  {r['vs_plain']:6.2f} x plain")
    print(json.dumps(report))


if __name__ == "__main__":
    typer.run(main)
