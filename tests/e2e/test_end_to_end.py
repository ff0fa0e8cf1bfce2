"""`datagen run` through the CLI on the tiny preset, read back as a training job would."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds
from pycocotools import mask as mask_utils

from pipeline.dataset.reader import open_dataset

ARGS = ["--vocab", "voc", "--n", "6", "--models", "tiny", "--bootstrap-n", "4", "--train-steps", "3",
        "--shard-size", "4", "--batch-size", "2", "--seed", "3"]


def datagen(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("e2e") / "voc"
    result = datagen("run", *ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_writes_the_whole_layout(run):
    out, result = run
    for name in ("manifest.json", "classes.json", "README.md", "grounding/model.safetensors",
                 "grounding/config.json", "oracle/shard-000000.tar", "data/shard-000000.tar",
                 "data/.shard-000000.stats.json", "data/.shard-000001.stats.json"):
        assert (out / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["config"]["n"] == 6
    assert len(manifest["vocabulary"]["classes"]) == 20
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["planned"] == 6 and summary["written"] + sum(summary["failed"].values()) == 6
    assert summary["written"] >= 3  # the near-initial tiny module labels most samples


def test_oracle_shards_carry_latents_and_seen_classes_only(run, voc):
    out, _ = run
    samples = list(wds.WebDataset(str(out / "oracle" / "shard-000000.tar"), shardshuffle=False))
    for s in samples:
        meta = json.loads(s["json"])
        assert all(voc[c].seen for c in meta["classes"])
        latent = np.load(__import__("io").BytesIO(s["latent.npy"]))
        assert latent.shape == (4, 16, 16) and latent.dtype == np.float32


def test_dataset_reads_back_as_class_index_masks_and_rle(run, voc):
    out, _ = run
    samples = list(open_dataset(sorted(str(p) for p in (out / "data").glob("*.tar"))))
    stats = [json.loads(p.read_text()) for p in sorted((out / "data").glob("*.stats.json"))]
    assert len(samples) == sum(s["written"] for s in stats)
    for s in samples:
        meta, seg = s["json"], s["seg.png"]
        assert s["jpg"].shape == (64, 64, 3) and seg.shape == (64, 64) and seg.dtype == np.uint8
        assert set(np.unique(seg)) <= {0, *meta["class_ids"]}
        assert all(1 <= i <= 20 for i in meta["class_ids"])
        for inst in meta["instances"]:
            rle = dict(inst["segmentation"], counts=inst["segmentation"]["counts"].encode())
            decoded = mask_utils.decode(rle).astype(bool)
            assert decoded.shape == (64, 64)
            np.testing.assert_array_equal(decoded, seg == inst["class_id"])


def test_plain_webdataset_reads_masks_as_class_ids_as_the_readme_shows(run):
    import io

    from PIL import Image

    out, _ = run
    shards = sorted(str(p) for p in (out / "data").glob("*.tar"))
    plain = wds.WebDataset(shards, shardshuffle=False).decode(
        wds.handle_extension("seg.png", lambda b: np.array(Image.open(io.BytesIO(b)))), "rgb8")
    ours = open_dataset(shards)
    pairs = list(zip(plain, ours, strict=True))
    assert pairs
    for a, b in pairs:
        assert a["__key__"] == b["__key__"] and a["seg.png"].ndim == 2
        np.testing.assert_array_equal(a["seg.png"], b["seg.png"])
        assert a["jpg"].dtype == np.uint8 and a["jpg"].shape[-1] == 3


def test_rerun_does_no_work_and_writes_nothing(run):
    out, _ = run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = datagen("run", *ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "dataset is complete" in result.stderr
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_another_config_into_the_same_folder_is_refused(run):
    out, _ = run
    result = datagen("run", *ARGS[:-1], "4", "--out", str(out))
    assert result.returncode == 2 and "another config" in result.stderr


def test_missing_real_weights_fail_fast(tmp_path):
    result = datagen("run", "--vocab", "coco", "--n", "10", "--out", str(tmp_path / "x"),
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "stable-diffusion-v1-5" in lines[0] and "--sd-path" in lines[0]
    assert not (tmp_path / "x").exists()


def test_label_before_train_says_what_to_run(tmp_path):
    result = datagen("label", *ARGS, "--out", str(tmp_path / "y"))
    assert result.returncode == 2
    assert "no grounding checkpoint" in result.stderr and "datagen train" in result.stderr


def test_prompts_command_prints_the_plan():
    result = datagen("prompts", "--vocab", "voc", "--n", "3", "--phase", "oracle")
    specs = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0 and [s["index"] for s in specs] == [0, 1, 2]
    assert all(set(s) == {"index", "prompt", "classes", "seed"} for s in specs)


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "--n: Input should be greater than 0"),
    (["--models", "huge"], "unknown model preset 'huge'"),
    (["--vocab", "nope"], "unknown vocabulary 'nope'"),
    (["--train-steps", "0"], "train.steps"),
    (["--device", "tpu"], "--device: 'tpu' is not auto, cpu, cuda, cuda:N or mps"),
    (["--executor", "dask"], "--executor: Input should be 'local' or 'ray'"),
    (["--workers", "0"], "--workers: Input should be greater than 0"),
])
def test_bad_flags_get_one_line_and_exit_2(tmp_path, args, message):
    result = datagen("run", "--models", "tiny", "--out", str(tmp_path / "z"), *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "z").exists()


def test_same_seed_gives_byte_identical_shards(run, tmp_path):
    out, _ = run
    again = tmp_path / "again"
    assert datagen("run", *ARGS, "--out", str(again)).returncode == 0
    for phase in ("oracle", "data"):
        shards = sorted((out / phase).glob("*.tar"))
        assert shards and [p.read_bytes() for p in shards] == \
            [(again / phase / p.name).read_bytes() for p in shards]


def test_samples_that_raised_exit_1_and_a_rerun_retries_them(tmp_path, monkeypatch, cache_dir):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.run.workers import ShardWorker

    original = ShardWorker._oracle_batch

    def fails_on_sample_1(self, batch):
        if any(spec.index == 1 for spec in batch):
            raise RuntimeError("injected")
        return original(self, batch)

    args = ["generate", *ARGS, "--out", str(tmp_path / "d")]
    monkeypatch.setattr(ShardWorker, "_oracle_batch", fails_on_sample_1)
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 1 and "1 samples raised errors" in first.output, first.output
    monkeypatch.setattr(ShardWorker, "_oracle_batch", original)
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    stats = json.loads((tmp_path / "d" / "oracle" / ".shard-000000.stats.json").read_text())
    assert not any(reason.startswith("error") for reason in stats["failed"])
