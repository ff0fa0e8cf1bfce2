"""Tiny-preset throughput of phase C (labelling) on the in-process and Ray executors, in one run.

Both executors label the same shards into fresh folders. Reported per executor: wall time, samples/s,
the model compute time (the workers' per-shard compute seconds: generation, feature capture,
grounding) and the time outside it (wall minus compute: model loading, encoding and writing that
does not overlap compute, scheduling, object transfers). Ray's local instance is started before the
clock; its actors' start-up and model loading are inside it. The tiny preset has random weights:
these numbers measure overheads of the pipeline, not the real model's speed.

    python benchmarks/executors.py [--n 16] [--shard-size 4] [--batch-size 4]
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
from pipeline.run.executors import ExecutorSettings, make_executor
from pipeline.run.executors.ray_executor import connect, disconnect
from pipeline.run.phases import run_shard_phase
from pipeline.runtime import Runtime
from pipeline.training.job import feature_channels
from stages.grounding.model import GroundingConfig, GroundingModule, save_grounding


def untrained_checkpoint(config: RunConfig, folder: Path) -> None:
    """A grounding checkpoint with the preset's sizes (training is not what is measured here)."""
    runtime = Runtime(config)
    torch.manual_seed(0)
    module = GroundingModule(GroundingConfig(
        feature_channels=feature_channels(runtime), text_dim=runtime.pipe.text_encoder.config.hidden_size,
        image_size=config.preset.image_size, **config.preset.grounding.model_dump()))
    save_grounding(module, folder / GROUNDING_DIR)


def measure(kind: str, config: RunConfig, settings: ExecutorSettings) -> dict:
    executor = make_executor(settings)
    started = time.perf_counter()
    report = run_shard_phase(config, Phase.LABEL, executor)
    wall = time.perf_counter() - started
    assert not report.failed_shards, report.failed_shards
    compute = sum(s["seconds"] for s in report.stats)
    samples = sum(s["planned"] for s in report.stats)
    return {"executor": kind, "samples": samples, "wall_s": round(wall, 2),
            "samples_per_s": round(samples / wall, 3), "model_compute_s": round(compute, 2),
            "outside_compute_s": round(wall - compute, 2), "outside_fraction": round(1 - compute / wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=4)
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
    print(f"{'executor':18} {'wall s':>8} {'samples/s':>10} {'compute s':>10} {'outside s':>10} {'outside':>8}")
    for r in results:
        print(f"{r['executor']:18} {r['wall_s']:8.2f} {r['samples_per_s']:10.3f} {r['model_compute_s']:10.2f} "
              f"{r['outside_compute_s']:10.2f} {r['outside_fraction']:8.1%}")
    for r in results[::2]:
        print(f"ray / {r['executor']} throughput: {results[1]['samples_per_s'] / r['samples_per_s']:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
