"""`datagen run` on the tiny preset with the detectron2 oracle (a shrunk model-zoo config, random
weights) writes a valid dataset that records the oracle; without detectron2 the run stops first."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from detectron2_fixtures import MODEL_ZOO_CONFIG, needs_detectron2, random_checkpoint, write_small_config
from typer.testing import CliRunner

from pipeline.cli import app, main
from pipeline.config import CONFIG_DIR
from pipeline.dataset.provenance import file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def detectron2_preset(folder, config: str, weights: str):
    """The tiny preset with the detectron2 oracle."""
    preset = yaml.safe_load((CONFIG_DIR / "presets" / "tiny.yaml").read_text())
    preset.update(oracle_backend="detectron2", oracle_config=config, oracle_weights=weights)
    path = folder / "tiny-detectron2.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    folder = tmp_path_factory.mktemp("d2-run")
    config = write_small_config(folder)
    weights = random_checkpoint(config, folder / "oracle.pth")
    out = folder / "out"
    result = CliRunner().invoke(app, [
        "run", "--vocab", "voc", "--n", "4", "--models", str(detectron2_preset(folder, str(config), str(weights))),
        "--bootstrap-n", "6", "--train-steps", "2", "--shard-size", "4", "--batch-size", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, config, weights


@needs_detectron2
def test_run_with_the_detectron2_oracle_writes_a_valid_dataset(run):
    out, _, _ = run
    result = CliRunner().invoke(app, ["validate", str(out)])
    assert result.exit_code == 0, result.output
    oracle_stats = json.loads((out / "oracle" / ".shard-000000.stats.json").read_text())
    assert oracle_stats["written"] > 0  # the oracle labelled some of phase A's images


@needs_detectron2
def test_manifest_and_card_record_the_oracles_backend_config_and_weights(run):
    out, config, weights = run
    record = json.loads((out / "manifest.json").read_text())["model_revisions"]["oracle"]
    assert record["backend"] == "detectron2"
    assert record["config"]["source"] == str(config) and record["config"]["sha256"] == file_sha256(config)
    assert record["config"]["detectron2"] == "0.6"
    assert record["sha256"] == file_sha256(weights)
    card = (out / "README.md").read_text()
    assert f"`detectron2` `{config}` (sha256 `{file_sha256(config)}`), weights `{weights}`" in card
    assert record["sha256"] in card


def test_choosing_detectron2_where_it_is_missing_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, cache_dir):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "stages.oracle.detectron2_backend", raising=False)
    preset = detectron2_preset(tmp_path, MODEL_ZOO_CONFIG, str(tmp_path / "model_final.pkl"))
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["datagen", "run", "--vocab", "voc", "--n", "2", "--models", str(preset),
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "detectron2" in err and "pip install" in err
    assert not out.exists(), "the run started before the check"
