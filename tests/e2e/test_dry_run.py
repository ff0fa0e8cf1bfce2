"""`datagen run --dry-run`: the plan, from the config alone: no model is built or loaded, nothing is written."""

import json

import pytest
import torch

from pipeline.config import resolve_vocabulary
from pipeline.dataset.sizing import bytes_per_sample
from pipeline.run.costs import SECONDS
from stages.prompts import prompt_specs


@pytest.fixture
def no_models(monkeypatch, tmp_path):
    """No weights anywhere (an empty models cache and hub cache, offline), and any torch module built fails."""
    monkeypatch.setenv("DATAGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run built a torch module")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)


def test_a_bare_run_plans_its_110000_samples_without_a_model(datagen, no_models, tmp_path):
    out = tmp_path / "out"
    result = datagen("run", "--dry-run", "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    oracle, train, label = (plan["phases"][p] for p in ("oracle", "train", "label"))
    assert (oracle["samples"], oracle["shards"], train["steps"], label["samples"], label["shards"]) == \
        (20000, 20, 20000, 110000, 110)
    coco = resolve_vocabulary("coco")
    assert label["prompts"] == [s.prompt for s in prompt_specs(coco, coco.classes, "label", 0, range(3))]
    assert label["bytes"] == 110000 * bytes_per_sample(512, "jpg")
    assert plan["bytes"] == label["bytes"] + oracle["bytes"] > label["bytes"]
    assert plan["seconds"] is None and "not measured" in plan["time_source"]  # sd15 has no CPU figure
    gpu, scale = SECONDS[("sd15", "cuda")], 25 / 50  # measured at DDIM 50; sd15 samples 25 DPM-Solver++ steps
    assert plan["elsewhere"]["cuda"]["seconds"] == pytest.approx(
        (20000 * gpu["oracle"] + 110000 * gpu["label"]) * scale, abs=0.1)
    assert plan["elsewhere"]["cuda"]["not_measured"] == ["train"]
    assert "110000" in result.stderr and "on cuda:" in result.stderr
    assert not out.exists()


def test_a_tiny_plan_has_a_time_from_measured_figures(datagen, no_models, tmp_path):
    result = datagen("run", "--dry-run", "--models", "tiny", "--vocab", "voc", "--n", "64", "--labeler", "attention",
                     "--device", "cpu", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert list(plan["phases"]) == ["label"]  # the attention labeler needs no phase A or B
    assert plan["seconds"] == pytest.approx(64 * SECONDS[("tiny", "cpu")]["label"], abs=0.1)
    assert plan["seconds"] > 0 and plan["not_measured"] == []


def test_a_phase_command_on_a_dataset_plans_its_n_not_the_default(datagen, tiny_dataset):
    """`datagen label --out DATASET` with no --n keeps the dataset's 16 samples, not 110,000."""
    made_with = ("--bootstrap-n", "4", "--train-steps", "3", "--shard-size", "4", "--batch-size", "2", "--seed", "3")
    result = datagen("label", "--dry-run", "--out", tiny_dataset, "--device", "cpu", *made_with)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["phases"]["label"]["samples"] == 16
    grown = datagen("label", "--dry-run", "--out", tiny_dataset, "--device", "cpu", "--n", "20", *made_with)
    assert json.loads(grown.stdout)["phases"]["label"]["samples"] == 20
