"""`datagen eval labels` on the tiny preset and a few rendered 32-px scenes: the report of every labeler, the
same on a rerun; bad input is one line, exit code 2, and nothing written."""

import json
import shutil

import pytest

from pipeline.config import RunConfig, load_preset, resolve_vocabulary
from pipeline.runtime import Runtime
from pipeline.training.job import install, new_trainer
from testbed.toy_shapes import write_scene_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

ARGS = ["--vocab", "shapes", "--models", "tiny", "--device", "cpu", "--batch-size", "3", "--seed", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """An output folder holding a (randomly initialised) grounding checkpoint for the tiny preset."""
    out = tmp_path_factory.mktemp("labels")
    config = RunConfig(vocab="shapes", out=out, preset_name="tiny", preset=load_preset("tiny"), n=1, device="cpu",
                       cache_dir=cache_dir)
    install(out, new_trainer(config, Runtime(config)).module, {"source": "test"})
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    classes = [c.name for c in resolve_vocabulary("shapes").classes]
    return write_scene_dataset(tmp_path_factory.mktemp("scenes") / "real", classes, 0, 6, 32, seed=4)


def test_eval_labels_writes_the_report_of_every_labeler(datagen, trained, scenes):
    result = datagen("eval", "labels", *ARGS, "--real", scenes, "--out", trained, "--labeler", "all")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == json.loads((trained / "eval" / "labels.json").read_text())
    assert report["labelers"] == ["grounding", "attention", "consensus"]
    assert report["images"] == report["scored_images"] == 6 and report["real"]["split"] == "VOC val"
    groups = report["by_classes"]
    assert groups["one_class"]["images"] + groups["multi_class"]["images"] == 6
    shown = [c for c in report["classes"] if c["images"]]
    assert 6 <= sum(c["images"] for c in shown) <= 12
    for name, scores in report["scores"].items():
        assert all(0 <= c["iou"][name] <= 1 for c in shown)
        assert 0 <= scores["absent_pixels"] <= 1
        for split in ("seen", "unseen"):
            ious = [c["iou"][name] for c in shown if c["split"] == split]
            assert scores[f"miou_{split}"] == (pytest.approx(sum(ious) / len(ious)) if ious else None)
    assert all(text in result.stderr for text in ("Labels vs truth", "absent-class", "one-class", "multi-class"))

    again = datagen("eval", "labels", *ARGS, "--real", scenes, "--out", trained, "--labeler", "all", "--json",
                    trained / "again.json")
    timing = ("seconds", "seconds_per_image")
    assert {k: v for k, v in json.loads(again.stdout.splitlines()[-1]).items() if k not in timing} == \
        {k: v for k, v in report.items() if k not in timing}


def no_masks(scenes, tmp_path):
    folder = shutil.copytree(scenes, tmp_path / "real")
    shutil.rmtree(folder / "SegmentationClass")
    return ["--real", folder], "is missing in SegmentationClass and SegmentationClassAug"


def other_vocabulary(scenes, tmp_path):
    return ["--real", scenes, "--vocab", "voc"], "has no class named aeroplane"


def other_preset(scenes, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(json.dumps({"config": {"preset_name": "world",
                                                                           "preset": {"sd": "world"}}}))
    return ["--real", scenes], "--models tiny, but --out " + str(tmp_path / "out") + " was made with --models world"


@pytest.mark.parametrize("bad", [no_masks, other_vocabulary, other_preset])
def test_bad_input_is_one_line_and_writes_nothing(datagen, scenes, tmp_path, cache_dir, bad):
    args, message = bad(scenes, tmp_path)
    result = datagen("eval", "labels", *ARGS, "--out", tmp_path / "out", "--labeler", "attention", *args)
    assert result.returncode == 2
    assert message in result.one_line()
    out = tmp_path / "out"
    made = {p.relative_to(out).as_posix() for p in out.rglob("*")} if out.exists() else set()
    assert made <= {"manifest.json"}, made  # nothing claimed or written beside the dataset found there
