"""Each benchmark script runs, at its smallest size, as `make bench*` runs it, and prints the report it
promises: the scripts are not imported by anything else, so only this keeps them from rotting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from detectron2_fixtures import needs_detectron2

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, *args: str, cache_dir: Path) -> dict:
    """Run ``benchmarks/NAME.py ARGS`` as a user does; the JSON report on its last stdout line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DATAGEN_CACHE": str(cache_dir),
           # this checkout's pipeline/ and stages/, even where the venv's editable install is another's
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)  # the executors benchmark starts its own local Ray
    result = subprocess.run([sys.executable, f"benchmarks/{name}.py", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-4000:]
    return json.loads(lines[-1])


def test_executors_benchmark(cache_dir):
    """`make bench` at 4 samples (2 shards): a throughput row for each executor, and its steady-state rate
    after start-up where progress came in more than one report (Ray's is polled, so its may not)."""
    results = run_script("executors", "--n", "4", "--shard-size", "2", "--batch-size", "2", cache_dir=cache_dir)
    assert [r["executor"].split(" ")[0] for r in results] == ["local", "ray", "local"], results
    for r in results:
        assert r["samples"] == 4, r
        assert math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0 and r["startup_s"] > 0, r
    assert results[0]["steady_samples_per_s"] > 0 and results[2]["steady_samples_per_s"] > 0, results
    assert results[1]["steady_samples_per_s"] is None or results[1]["steady_samples_per_s"] > 0, results


def test_grounding_toy_benchmark(cache_dir, tmp_path):
    """`make bench-grounding` at 8 training images and 2 steps: a held-out mIoU and its baseline."""
    report = run_script("grounding_toy", "--out", str(tmp_path / "bench"), "--n-train", "8", "--n-val", "4",
                        "--steps", "2", "--vae-steps", "1", cache_dir=cache_dir)
    assert report["steps"] == 2 and report["train_images"] == 8 and report["val_images"] == 4, report
    for key in ("miou", "all_background_miou", "first_loss", "last_loss"):
        assert math.isfinite(report[key]), (key, report)
    assert 0 <= report["miou"] <= 1 and 0 < report["all_background_miou"] <= 1, report
    assert report["validation_curve"][-1] == [2, report["miou"]], report
    assert (tmp_path / "bench" / "toy-voc" / "ImageSets" / "Segmentation" / "val.txt").is_file()


def test_labelers_benchmark(cache_dir):
    """`make bench-labelers` at 1 image: seconds per image of plain generation and of each labeler."""
    report = run_script("labelers", "--images", "1", "--batch-size", "1", "--repeats", "1", cache_dir=cache_dir)
    assert [r["what"] for r in report] == ["plain generation", "grounding labeler", "attention labeler"], report
    assert report[0]["vs_plain"] == 1 and all(r["s_per_image"] > 0 for r in report), report


@needs_detectron2
def test_oracle_backends_benchmark(cache_dir):
    """`make bench-oracle` at one 32-px image: CPU seconds per image of each backend, without and with detections."""
    rows = run_script("oracle_backends", "--sizes", "32", "--images", "1", "--image-size", "32", cache_dir=cache_dir)
    assert [(r["backend"], r["input_size"], r["detections_per_image"] > 0) for r in rows] == [
        ("torchvision", 32, False), ("detectron2", 32, False), ("torchvision", 32, True), ("detectron2", 32, True)]
    assert all(math.isfinite(r["cpu_s_per_image"]) and r["cpu_s_per_image"] > 0 for r in rows), rows

def test_throughput_benchmark(cache_dir):
    """`make bench-throughput` on the tiny architecture at 64 px, 2 steps, one image per mode: every mode
    has seconds, FLOPs and its ratio to bare diffusers (the attention labeler too);
    loading is measured with and without low_cpu_mem_usage."""
    report = run_script("throughput", "--arch", "tiny", "--image-size", "64", "--steps", "2", "--batch-size", "1",
                        "--rounds", "1", "--loading", cache_dir=cache_dir)
    assert (report["image_size"], report["steps"], report["batch_size"]) == (64, 2, 1), report
    assert report["dtype"] == "float32" and report["peak_tflops"] is None  # a CPU: no peak to compare with
    assert report["attention_processors"] == ["AttnProcessor2_0"], report  # PyTorch's fused attention
    for mode in ("a", "b", "c"):
        row = report["modes"][mode]
        assert row["images"] == 1 and row["s_per_image"] > 0 and row["gflop_per_image"] > 0, row
        assert row["warmup_s"] > 0 and row["fraction_of_peak"] is None, row
    assert set(report["ratios"]) >= {"b/a", "c/a"} and all(math.isfinite(v) for v in report["ratios"].values())
    assert "d/a" in report["ratios"], report  # the attention labeler, measured like the others
    # phase C's compute alone: the same FLOPs as b, without the encoding and the write
    assert "e/a" in report["ratios"]
    assert report["modes"]["e"]["gflop_per_image"] == report["modes"]["b"]["gflop_per_image"], report["modes"]
    # the oracle (a Mask R-CNN) adds FLOPs to the same generation
    assert report["modes"]["c"]["gflop_per_image"] > 2 * report["modes"]["a"]["gflop_per_image"], report["modes"]
    for key in ("low_cpu_mem_usage=False", "low_cpu_mem_usage=True"):
        loaded = report["loading"][key]
        assert loaded["ready_s"] >= loaded["from_pretrained_s"] > 0 and loaded["peak_rss_gb"] > 0, loaded
        assert loaded["finite"], loaded


def test_memory_benchmark(cache_dir):
    """`make bench-memory` at n = 4 and 8: a fresh process per n, each with its peak memory, and their ratio."""
    report = run_script("memory", "--n", "4", "8", "--image-size", "64", "--shard-size", "2", "--batch-size", "2",
                        "--steps", "1", cache_dir=cache_dir)
    assert [(r["n"], r["shards"]) for r in report["runs"]] == [(4, 2), (8, 4)], report
    assert all(r["peak_gb"] >= r["peak_before_phase_gb"] > 0 for r in report["runs"]), report
    assert math.isfinite(report["ratio"]) and report["ratio"] > 0, report
