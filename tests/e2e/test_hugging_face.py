"""Hugging Face ``datasets`` loads a dataset folder, or its shard folder, as the samples (issue 26): the
card's front matter names the shards and describes the data, and data/ holds nothing else the
webdataset builder would take (shard stats and the wids index are hidden files)."""

import json

import numpy as np
import pytest
import yaml

from pipeline.dataset.reader import training_dataset, wids_dataset


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))


@pytest.mark.parametrize("folder", [".", "data"])
def test_load_dataset_yields_image_mask_and_prompt_per_sample(tiny_dataset, hf_cache, folder):
    import datasets

    ds = datasets.load_dataset(str(tiny_dataset / folder), split="train")
    keys = sorted(meta["key"] for _, _, meta in training_dataset(tiny_dataset))
    assert sorted(ds["__key__"]) == keys and len(keys) == 16
    row = ds[0]
    image, mask = np.array(row["jpg"]), np.array(row["seg.png"])
    assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.dtype == np.uint8
    assert row["json"]["prompt"].startswith("a photograph of")


def test_the_card_front_matter_describes_the_dataset_for_the_hub(tiny_dataset):
    text = (tiny_dataset / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    classes = json.loads((tiny_dataset / "classes.json").read_text())["classes"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.tar"}]}]
    assert meta["task_categories"] == ["image-segmentation"] and meta["task_ids"] == ["semantic-segmentation"]
    assert meta["license"] == "other" and meta["license_name"] == "datagen-tiny-random-weights"  # no model licence
    assert meta["id2label"] == {0: "background", **{c["id"]: c["name"] for c in classes}, 255: "ignore"}
    assert meta["size_categories"] == ["n<1K"]


def test_a_dataset_with_stats_and_index_beside_its_shards_still_reads(copy, datagen):
    """Datasets written before the stats and the wids index were hidden: every reader still finds them."""
    data = copy / "data"
    for hidden in data.glob(".*"):
        hidden.rename(data / hidden.name.removeprefix("."))
    assert not list(data.glob(".*"))
    assert len(list(training_dataset(copy))) == 16 and len(wids_dataset(copy)) == 16
    assert datagen("validate", str(copy)).returncode == 0
    assert json.loads(datagen("stats", str(copy), "--json").stdout)["samples"]["written"] == 16
