"""`make_dataset` from Python, with no command line loaded: a tiny consensus-labelled dataset that
validates, whose samples keep their agreement rate, and that the `datagen` command then finds complete."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset.reader import open_dataset, shard_urls
from pipeline.inspect.validate import validate_output

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

MAKE = """
import json, sys
from pipeline.config import RunConfig, load_preset
from pipeline.run.api import make_dataset

preset = load_preset("tiny", {"bootstrap_n": 4, "shard_size": 3, "batch_size": 3, "train": {"steps": 3}})
config = RunConfig(vocab="voc", out=sys.argv[1], preset_name="tiny", preset=preset, n=6, seed=2,
                   labeler="consensus", cache_dir=sys.argv[2])
result = make_dataset(config)
print(json.dumps({"ok": result.ok, "complete": result.complete, "summary": result.summary,
                  "labels": result.labels, "typer": "typer" in sys.modules}))
"""


@pytest.fixture(scope="module")
def consensus_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("api") / "consensus"
    done = subprocess.run([sys.executable, "-c", MAKE, str(out), str(cache_dir)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    return out, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_api_makes_a_valid_dataset_without_the_command_line(consensus_run):
    out, result = consensus_run
    assert result["typer"] is False and result["ok"] and not result["complete"]
    assert result["summary"]["planned"] == 6 and result["summary"]["written"] >= 1
    assert result["labels"]["labeler"] == "consensus" and result["labels"]["zero_shot"] is True
    problems, _ = validate_output(out)
    assert problems == []


def test_consensus_samples_ignore_exactly_the_pixels_the_labelers_disagree_on(consensus_run):
    out, _ = consensus_run
    attention = json.loads((out / "manifest.json").read_text())["config"]["preset"]["attention"]
    samples = list(open_dataset(shard_urls(out)))
    assert samples
    for sample in samples:
        meta, seg = sample["json"], sample["seg.png"]
        assert meta["labeler"] == "consensus" and "capture_timestep" in meta["provenance"]
        assert meta["labeler_settings"]["attention"]["threshold"] == attention["threshold"]
        assert meta["labeler_stats"]["agreement"] == pytest.approx(1 - (seg == 255).mean(), abs=1e-6)
        assert set(np.unique(seg)) <= {0, 255, *meta["class_ids"]}
    card = (out / "README.md").read_text()
    assert "consensus labeler" in card and "| labeler | `consensus`: the grounding module and attention" in card


def test_the_command_line_finds_the_api_s_dataset_complete(consensus_run, datagen):
    out, _ = consensus_run
    rerun = datagen("run", "--vocab", "voc", "--models", "tiny", "--n", "6", "--shard-size", "3", "--batch-size", "3",
                    "--bootstrap-n", "4", "--train-steps", "3", "--seed", "2", "--labeler", "consensus", "--out", out)
    assert rerun.returncode == 0 and "dataset is complete" in rerun.stderr


@pytest.mark.parametrize("module", ["stages.labelers.attention", "stages.labelers.grounding",
                                    "stages.labelers.consensus"])
def test_each_labeler_module_imports_first_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_readme_s_python_api_snippet_makes_its_dataset(tmp_path, cache_dir):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "make_dataset" in block)
    script = snippet + "\nassert result.ok and result.summary['written'] >= 1, result.summary\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"DATAGEN_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "api" / "README.md").is_file()
