"""`datagen eval grounding` (Protocol I) on the tiny preset: a report per class, seen and unseen apart."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import RunConfig, load_preset
from pipeline.runtime import Runtime
from pipeline.training.job import install, new_trainer

ARGS = ["--vocab", "voc", "--models", "tiny", "--n", "8", "--batch-size", "4", "--seed", "3"]


def datagen(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """An output folder holding a (randomly initialised) grounding checkpoint for the tiny preset."""
    out = tmp_path_factory.mktemp("protocol1")
    config = RunConfig(vocab="voc", out=out, preset_name="tiny", preset=load_preset("tiny"), n=1, device="cpu",
                       cache_dir=cache_dir)
    install(out, new_trainer(config, Runtime(config)).module, {"source": "test"})
    return out


def test_eval_grounding_reports_seen_and_unseen_miou_of_every_labeler_in_one_table(trained, voc):
    result = datagen("eval", "grounding", *ARGS, "--out", str(trained), "--labeler", "all")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == json.loads((trained / "eval" / "protocol1.json").read_text())
    assert report["protocol"] == "I" and report["images"] == 8
    assert report["labelers"] == ["grounding", "attention", "consensus"]
    assert [c["name"] for c in report["classes"]] == [c.name for c in voc.classes]
    assert {c["split"] for c in report["classes"] if c["name"] in ("sheep", "sofa", "train")} == {"unseen"}
    prompted = sum(c["pairs"] + c["oracle_missed"] for c in report["classes"])
    assert 8 <= prompted <= 16  # one or two classes per image
    groups = report["by_classes"]
    assert groups["one_class"]["images"] + 2 * groups["multi_class"]["images"] == prompted
    assert groups["one_class"]["images"] + groups["multi_class"]["images"] == 8
    scored = [c for c in report["classes"] if c["pairs"]]
    assert scored
    for labeler in ("grounding", "attention", "consensus"):
        assert all(0 <= c["iou"][labeler] <= 1 for c in scored)
        assert all(c["iou"][labeler] is None for c in report["classes"] if not c["pairs"])
        for split in ("seen", "unseen"):
            ious = [c["iou"][labeler] for c in scored if c["split"] == split]
            expected = pytest.approx(sum(ious) / len(ious)) if ious else None
            assert report["scores"][labeler][f"miou_{split}"] == expected
    assert report["scores"]["attention"]["zero_shot"] is True
    assert report["scores"]["attention"]["details"]["settings"]["threshold"] == 0.6
    assert report["scores"]["consensus"]["grounding"]["source"] == "test"
    assert report["scores"]["grounding"]["grounding"]["source"] == "test"
    assert all(name in result.stderr for name in ("grounding", "attention", "consensus", "mIoU seen"))


def test_eval_attention_needs_no_checkpoint(tmp_path, cache_dir):
    result = CliRunner().invoke(app, ["eval", "grounding", *ARGS[:4], "--n", "2", "--batch-size", "2",
                                      "--labeler", "attention", "--out", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "none" / "eval" / "protocol1.json").read_text())
    assert report["labelers"] == ["attention"] and report["zero_shot"] is True
    assert sum(c["pairs"] + c["oracle_missed"] for c in report["classes"]) >= 2


def test_eval_grounding_without_a_checkpoint_says_so(tmp_path, cache_dir):
    result = datagen("eval", "grounding", *ARGS, "--out", str(tmp_path / "none"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no grounding checkpoint" in result.stderr


def test_train_annotated_on_a_folder_that_is_not_voc_is_one_line_and_leaves_nothing(tmp_path, cache_dir):
    out = tmp_path / "out"
    result = datagen("train-annotated", "--data", str(tmp_path / "nope"), "--vocab", "voc", "--models", "tiny",
                     "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}/ImageSets/Segmentation/train.txt is missing: not a VOC-layout folder with a "
        "'train' image set"]
    assert not out.exists()
