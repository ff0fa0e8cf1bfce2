"""`datagen run --labeler attention` on the tiny preset: a valid dataset with no oracle and no training, whose
manifest, samples and card name the labeler and its settings."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError
from pipeline.dataset.reader import open_dataset, shard_urls
from pipeline.inspect.validate import validate_output

ARGS = ["--vocab", "voc", "--models", "tiny", "--n", "6", "--shard-size", "3", "--batch-size", "3", "--seed", "2",
        "--labeler", "attention"]
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def attention_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("attention") / "voc"
    result = CliRunner().invoke(app, ["run", *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


def test_attention_run_writes_a_valid_dataset_without_phases_a_and_b(attention_run):
    out, result = attention_run
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "classes.json", "data", "manifest.json"]
    problems, _ = validate_output(out)
    assert problems == []
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["planned"] == 6 and summary["written"] + sum(summary["failed"].values()) == 6
    assert summary["written"] >= 1 and set(summary["failed"]) <= {"empty_mask", "missing_mask"}


def test_manifest_samples_and_card_name_the_labeler_and_its_settings(attention_run):
    out, _ = attention_run
    manifest = json.loads((out / "manifest.json").read_text())
    labels = manifest["labels"]
    assert labels["labeler"] == "attention" and labels["zero_shot"] is True
    settings = manifest["config"]["preset"]["attention"]
    assert labels["details"]["settings"] == settings and settings["refine"] == {"level": 0, "power": 4}
    assert manifest["config"]["labeler"] == "attention" and manifest["models"]["oracle"] is None
    samples = list(open_dataset(shard_urls(out)))
    for sample in samples:
        meta = sample["json"]
        assert meta["labeler"] == "attention" and "capture_timestep" not in meta["provenance"]
        assert meta["labeler_settings"] == settings | {"timesteps": labels["details"]["timesteps"]}
        seg = sample["seg.png"]
        assert set(np.unique(seg)) <= {0, 255, *meta["class_ids"]}
        for inst in meta["instances"]:
            assert inst["area"] == int((seg == inst["class_id"]).sum())
    card = (out / "README.md").read_text()
    assert "| labeler | `attention`" in card and "| Mask R-CNN oracle | not used |" in card
    assert "(nothing trained: the attention labeler)" in card


def test_stats_and_card_count_ignore_pixels_apart_from_background(attention_run, datagen):
    """The attention labeler's uncertain band is 255: neither background nor a class, in stats and the card."""
    out, _ = attention_run
    masks = np.concatenate([s["seg.png"].ravel() for s in open_dataset(shard_urls(out))])
    counts = np.bincount(masks, minlength=256)
    assert counts[255] > 0 and counts[0] > 0
    stats = json.loads(datagen("stats", str(out), "--json").stdout)
    assert stats["ignore_pixel_share"] == pytest.approx(counts[255] / masks.size, abs=1e-6)
    assert stats["background_pixel_share"] == pytest.approx(counts[0] / masks.size, abs=1e-6)
    shares = stats["background_pixel_share"] + stats["ignore_pixel_share"] + sum(c["pixel_share"] for c in
                                                                                 stats["classes"])
    assert shares == pytest.approx(1, abs=1e-5)
    card = (out / "README.md").read_text()
    background, ignore = stats["background_pixel_share"], stats["ignore_pixel_share"]
    assert f"{background:.2%} background (0), {ignore:.2%} ignore (255)" in card
    table = datagen("stats", str(out)).stdout.splitlines()
    assert [line.split("│")[-2].strip() for line in table if "│ ignore " in line] == [f"{ignore:.2%}"]


def test_rerun_with_label_does_no_work_and_a_grounding_run_is_refused(attention_run):
    out, _ = attention_run
    rerun = CliRunner().invoke(app, ["label", *ARGS, "--out", str(out)])
    assert rerun.exit_code == 0 and "dataset is complete" in rerun.output
    grounding = CliRunner().invoke(app, ["run", *ARGS[:-2], "--out", str(out)])  # `datagen` prints it as one line
    assert isinstance(grounding.exception, ConfigError) and "another config" in str(grounding.exception)


def test_an_unknown_labeler_is_a_config_error_before_anything_is_written(tmp_path):
    result = CliRunner().invoke(app, ["run", *ARGS[:-1], "clip", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, ConfigError) and str(result.exception).startswith("--labeler: ")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["generate", "train"])
def test_phase_a_or_b_for_a_labeler_that_trains_nothing_is_refused_before_anything_is_written(command, tmp_path):
    result = CliRunner().invoke(app, [command, *ARGS, "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, ConfigError) and "needs no phase A or B" in str(result.exception)
    assert not (tmp_path / "x").exists()
