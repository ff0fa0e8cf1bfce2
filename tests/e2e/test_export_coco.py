"""`datagen export coco` on the tiny dataset: the JSON loads in pycocotools and detectron2, scores AP 1
against itself, holds every sample's image and exactly its class pixels as objects, and bad input is one
line with nothing written."""

import contextlib
import io
import json

import numpy as np
import pytest
from detectron2_fixtures import needs_detectron2
from pycocotools import mask as mask_utils

from pipeline.dataset.members import decode_mask
from pipeline.dataset.shards import encode_mask, finished_shards, write_shard
from pipeline.inspect.folder import open_output, read_shard


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path_factory.mktemp("export") / "coco"
    result = CliRunner().invoke(app, ["export", "coco", str(tiny_dataset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out / "instances.json")
    return out


def decode(annotation: dict) -> np.ndarray:
    return mask_utils.decode(dict(annotation["segmentation"], counts=annotation["segmentation"]["counts"].encode()))


def test_pycocotools_loads_it_and_it_scores_ap_1_against_itself(exported):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(exported / "instances.json"))
        detections = truth.loadRes([dict(a, score=1.0) for a in truth.dataset["annotations"]])
        for kind in ("segm", "bbox"):
            scores = COCOeval(truth, detections, kind)
            scores.evaluate()
            scores.accumulate()
            scores.summarize()
            assert scores.stats[0] == 1.0 and scores.stats[1] == 1.0, kind  # AP and AP50
    assert len(truth.getImgIds()) == 16 and len(truth.getAnnIds()) > 16
    names = {c["name"]: c["id"] for c in truth.loadCats(truth.getCatIds())}
    assert (names["aeroplane"], names["tvmonitor"], names["person"], len(names)) == (5, 72, 1, 20)  # COCO's ids


def test_every_sample_is_its_image_file_and_its_class_pixels_as_objects(exported, tiny_dataset):
    coco = json.loads((exported / "instances.json").read_text())
    assert coco["info"]["datagen"]["category_ids"] == "coco"
    to_class = {c["id"]: c["class_id"] for c in coco["categories"]}
    images = {i["id"]: i for i in coco["images"]}
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert sorted(a["id"] for a in coco["annotations"]) == list(range(1, len(coco["annotations"]) + 1))
    ds = open_output(tiny_dataset)
    samples = [s for shard in ds.shards for s in read_shard(shard)]
    assert sorted(images) == [int(s["__key__"]) for s in samples]
    for sample in samples:
        image = images[int(sample["__key__"])]
        assert (exported / "images" / image["file_name"]).read_bytes() == sample["jpg"]
        seg = decode_mask(sample["seg.png"])
        assert (image["height"], image["width"]) == seg.shape
        painted = np.zeros_like(seg)
        for a in by_image.get(image["id"], []):
            mask = decode(a).astype(bool)
            assert not painted[mask].any() and a["area"] == mask.sum() and a["iscrowd"] == 0  # disjoint objects
            painted[mask] = to_class[a["category_id"]]
            ys, xs = np.nonzero(mask)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert (painted == np.where(seg == 255, 0, seg)).all()  # every class pixel, in one object of its class


@needs_detectron2
def test_detectron2_registers_and_reads_it(exported):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    register_coco_instances("datagen_export_test", {}, str(exported / "instances.json"), str(exported / "images"))
    records = DatasetCatalog.get("datagen_export_test")
    coco = json.loads((exported / "instances.json").read_text())
    assert len(records) == 16 and sum(len(r["annotations"]) for r in records) == len(coco["annotations"])
    assert all((exported / "images" / r["file_name"].rsplit("/", 1)[-1]).is_file() for r in records)
    assert len(MetadataCatalog.get("datagen_export_test").thing_classes) == 20


def test_phase_a_exports_the_oracles_instances(datagen, tiny_dataset, tmp_path):
    result = datagen("export", "coco", tiny_dataset, "--out", tmp_path / "oracle", "--phase", "oracle")
    assert result.returncode == 0, result.stderr
    coco = json.loads((tmp_path / "oracle" / "instances.json").read_text())
    to_class = {c["id"]: c["class_id"] for c in coco["categories"]}
    ds = open_output(tiny_dataset, "oracle")
    samples = [s for shard in ds.shards for s in read_shard(shard)]
    stored = [(int(s["__key__"]), i) for s in samples for i in json.loads(s["json"])["instances"]]
    assert [i["id"] for i in coco["images"]] == [int(s["__key__"]) for s in samples] and stored
    assert [(a["image_id"], to_class[a["category_id"]], a["segmentation"], a["area"]) for a in coco["annotations"]] \
        == [(key, i["class_id"], i["segmentation"], i["area"]) for key, i in stored]  # each instance, as stored
    assert coco["info"]["datagen"]["phase"] == "oracle"


def test_dataset_ids_on_request_replacing_an_earlier_export(datagen, tiny_dataset, tmp_path):
    assert datagen("export", "coco", tiny_dataset, "--out", tmp_path / "ids").returncode == 0
    result = datagen("export", "coco", tiny_dataset, "--out", tmp_path / "ids", "--category-ids", "dataset")
    assert result.returncode == 0, result.stderr
    assert "the dataset's class ids as category ids" in result.stderr
    coco = json.loads((tmp_path / "ids" / "instances.json").read_text())
    assert all(c["id"] == c["class_id"] for c in coco["categories"]) and coco["info"]["datagen"]["category_ids"] \
        == "dataset"


def test_a_full_out_or_a_folder_that_is_not_a_dataset_is_one_line(datagen, tiny_dataset, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    result = datagen("export", "coco", tiny_dataset, "--out", full)
    assert result.returncode == 2 and "exists, is not empty and is not an earlier export" in result.one_line()
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    result = datagen("export", "coco", tmp_path, "--out", tmp_path / "new")
    assert result.returncode == 2 and "is not a datagen dataset (no manifest.json)" in result.one_line()
    assert not (tmp_path / "new").exists()
    result = datagen("export", "coco", tiny_dataset, "--out", tmp_path / "new", "--phase", "train")
    assert result.returncode == 2 and result.one_line() == "error: --phase must be label or oracle, not 'train'"


def test_a_damaged_shard_midway_leaves_nothing_at_out(datagen, copy, tmp_path):
    last = sorted((copy / "data").glob("shard-*.tar"))[-1]
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (tmp_path / "out").mkdir()  # an empty --out is fine; it stays as it was on failure
    result = datagen("export", "coco", copy, "--out", tmp_path / "out")
    assert result.returncode == 2 and "shard-000003.tar is truncated or corrupt" in result.one_line()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "out"] and not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("change, problem", [
    (lambda s: s.update({"seg.png": encode_mask(np.full((64, 64), 200, np.uint8))}), "seg.png holds class ids [200]"),
    (lambda s: s.update({"__key__": "images"}), "key 'images' is not a sample index"),
])
def test_a_sample_that_is_not_the_format_is_one_line_naming_shard_and_key(datagen, copy, tmp_path, change, problem):
    shard = finished_shards(copy / "data")[1]
    samples = list(read_shard(shard))
    change(samples[2])
    write_shard(shard.parent, 1, samples, json.loads((shard.parent / f".{shard.stem}.stats.json").read_text()))
    result = datagen("export", "coco", copy, "--out", tmp_path / "out")
    line = result.one_line()
    assert result.returncode == 2 and f"shard-000001.tar key {samples[2]['__key__']}: " in line and problem in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
