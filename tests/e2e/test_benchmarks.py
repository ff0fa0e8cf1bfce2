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

from pipeline.config import load_preset

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

def test_throughput_benchmark_through_the_gpu_script(cache_dir, tmp_path):
    """`make bench-throughput`'s path as benchmarks/gpu_run.sh runs it (its CPU smoke: the tiny architecture at
    64 px, 2 steps of DDIM and of DPM-Solver++, one image per mode; COMPILE=0 leaves out the compiled run): every
    mode of each scheduler has seconds, FLOPs and its ratio to bare diffusers, the attention labeler with the
    sd15 preset's own settings (they once named 512 px's map sizes and failed at any other size); the profile
    splits phase C's time into the UNet and the rest; loading is measured with and without low_cpu_mem_usage."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DATAGEN_CACHE": str(cache_dir), "PYTHON": sys.executable,
           "COMPILE": "0", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["bash", "benchmarks/gpu_run.sh", "smoke", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "stopped" not in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
    assert "ratios (s/image over a), dpmsolver++ 2" in done.stdout and "profile of phase C compute" in done.stdout
    report = json.loads((tmp_path / "eager.json").read_text())
    assert (report["image_size"], report["batch_size"]) == (64, 1), report
    assert report["dtype"] == "float32" and report["peak_tflops"] is None  # a CPU: no peak to compare with
    assert report["attention_processors"] == ["AttnProcessor2_0"], report  # PyTorch's fused attention
    assert report["attention_settings"] == load_preset("sd15").attention.to_dict(), report
    assert [(s["scheduler"], s["steps"], s["capture_timestep"]) for s in report["schedulers"]] == [
        ("ddim", 2, 1), ("dpmsolver++", 2, 500)]  # the last UNet call: t = 1 (DDIM "leading"), 999 / 2 (linspace)
    for result in report["schedulers"]:
        modes, ratios = result["modes"], result["ratios"]
        for mode in "abcde":
            row = modes[mode]
            assert row["images"] == 1 and row["s_per_image"] > 0 and row["gflop_per_image"] > 0, row
            assert row["warmup_s"] > 0 and row["fraction_of_peak"] is None, row
        assert set(ratios) == {"b/a", "c/a", "d/a", "e/a"} and all(math.isfinite(v) for v in ratios.values())
        # phase C's compute alone: the same FLOPs as b, without the encoding and the write
        assert modes["e"]["gflop_per_image"] == modes["b"]["gflop_per_image"], modes
        # the oracle (a Mask R-CNN) adds FLOPs to the same generation
        assert modes["c"]["gflop_per_image"] > 2 * modes["a"]["gflop_per_image"], modes
        profile = result["profile"]
        parts = profile["parts_s_per_image"]
        assert profile["clock"] == "cpu" and parts["grounding module"] > 0 and parts["VAE decoder"] > 0, profile
        assert 0 < parts["UNet"] < profile["s_per_image"], profile  # the parts nest in the batch, none counted twice
        assert parts["other (capture, masks, copies)"] >= 0 and profile["top_outside_unet"], profile
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
