"""Tiny-preset throughput of phase C (labelling) on the in-process and Ray executors, in one run.

Both executors label the same shards into fresh folders. Reported per executor: wall time, samples/s,
the model compute time (the workers' per-shard compute seconds: generation, feature capture,
grounding) and the time outside it (wall minus compute: model loading, encoding and writing that
does not overlap compute, scheduling, object transfers). Ray's local instance is started before the
clock; its actors' start-up and model loading are inside it. Steady-state samples/s leaves start-up
out: the samples reported after the first progress report (a finished batch, so the models are
loaded) over the time from that report to the end of the run. The tiny preset has random weights:
these numbers measure overheads of the pipeline, not the real model's speed.

    python benchmarks/executors.py [--n 192] [--shard-size 16] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import transformers

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.layout import DATA_DIR, GROUNDING_DIR, Phase
from pipeline.dataset.plan import pending
from pipeline.run.executors import ExecutorSettings, make_executor
from pipeline.run.executors.ray_executor import connect, disconnect
from pipeline.run.phases import shard_tasks
from pipeline.runtime import Runtime
from pipeline.training.job import new_trainer
from stages.grounding.model import save_grounding


def untrained_checkpoint(config: RunConfig, folder: Path) -> None:
    """A grounding checkpoint with the preset's sizes (training is not what is measured here)."""
    save_grounding(new_trainer(config, Runtime(config)).module, folder / GROUNDING_DIR)


def measure(kind: str, config: RunConfig, settings: ExecutorSettings) -> dict:
    executor = make_executor(settings)
    reports: list[tuple[float, int]] = []  # (time, samples so far) at each progress report
    counted = 0

    def on_samples(k: int) -> None:
        nonlocal counted
        counted += k
        if k:
            reports.append((time.perf_counter(), counted))

    started = time.perf_counter()
    report = executor.run(pending(shard_tasks(config, Phase.LABEL)), config, on_samples)
    ended = time.perf_counter()
    wall = ended - started
    assert not report.failed_shards, report.failed_shards
    compute = sum(s["seconds"] for s in report.stats)
    samples = sum(s["planned"] for s in report.stats)
    first_time, first_count = reports[0]
    steady = (samples - first_count) / (ended - first_time) if samples > first_count else None
    return {"executor": kind, "samples": samples, "wall_s": round(wall, 2),
            "samples_per_s": round(samples / wall, 3), "startup_s": round(first_time - started, 2),
            "steady_samples_per_s": round(steady, 3) if steady else None, "model_compute_s": round(compute, 2),
            "outside_compute_s": round(wall - compute, 2), "outside_fraction": round(1 - compute / wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance only; leaves no token in ~/.ray
    preset = load_preset("tiny", {"shard_size": args.shard_size, "batch_size": args.batch_size})
    root = Path(tempfile.mkdtemp(prefix="datagen-bench-"))
    ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: unix socket paths are limited
    try:
        configs = {kind: RunConfig(vocab="voc", out=root / kind, preset_name="tiny", preset=preset, n=args.n)
                   for kind in ("local", "ray", "local1")}
        for kind in configs:
            (root / kind / DATA_DIR).mkdir(parents=True)
        untrained_checkpoint(configs["local"], root / "local")
        for kind in ("ray", "local1"):
            shutil.copytree(root / "local" / GROUNDING_DIR, root / kind / GROUNDING_DIR)
        connect(None, _temp_dir=ray_temp)
        results = [measure(f"local ({torch.get_num_threads()} threads)", configs["local"], ExecutorSettings()),
                   measure("ray (1 worker)", configs["ray"], ExecutorSettings(kind="ray", workers=1))]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a 1-CPU Ray worker
        results.append(measure("local (1 thread)", configs["local1"], ExecutorSettings()))
        torch.set_num_threads(threads)
    finally:
        disconnect()
        for folder in (root, ray_temp):
            shutil.rmtree(folder, ignore_errors=True)
    print(f"phase C (label), tiny preset, {args.n} samples, shards of {args.shard_size}, batches of "
          f"{args.batch_size}; {os.cpu_count()} CPUs, Ray: one 1-CPU model worker + 1-CPU encoding tasks")
    print(f"{'executor':18} {'wall s':>8} {'samples/s':>10} {'start-up s':>10} {'steady/s':>9} {'compute s':>10} "
          f"{'outside s':>10} {'outside':>8}")
    for r in results:
        steady = f"{r['steady_samples_per_s']:9.3f}" if r["steady_samples_per_s"] else f"{'-':>9}"
        print(f"{r['executor']:18} {r['wall_s']:8.2f} {r['samples_per_s']:10.3f} {r['startup_s']:10.2f} {steady} "
              f"{r['model_compute_s']:10.2f} {r['outside_compute_s']:10.2f} {r['outside_fraction']:8.1%}")
    ray = results[1]
    for r in results[::2]:
        line = f"ray / {r['executor']}: throughput {ray['samples_per_s'] / r['samples_per_s']:.2f}"
        if ray["steady_samples_per_s"] and r["steady_samples_per_s"]:
            line += f", steady state {ray['steady_samples_per_s'] / r['steady_samples_per_s']:.2f}"
        print(line)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
