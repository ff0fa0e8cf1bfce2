"""The dataset loads unchanged in the readers training jobs use (that reading never unpickles is
unit/test_reader_safety.py)."""

import io
import json

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from pipeline.dataset.layout import WIDS_INDEX
from pipeline.dataset.reader import training_dataset, wids_dataset
from pipeline.dataset.shards import finished_shards
from pipeline.inspect.folder import read_shard


def reference(out):
    """key -> (image, class-id mask, prompt) decoded straight from the tars with Pillow."""
    samples = {}
    for shard in finished_shards(out / "data"):
        for s in read_shard(shard):
            samples[s["__key__"]] = (np.array(Image.open(io.BytesIO(s["jpg"]))),
                                     np.array(Image.open(io.BytesIO(s["seg.png"]))), json.loads(s["json"])["prompt"])
    return samples


def test_training_dataset_yields_tensors_with_class_index_masks(tiny_dataset):
    ref = reference(tiny_dataset)
    seen = set()
    for image, mask, meta in training_dataset(tiny_dataset):
        ref_image, ref_mask, prompt = ref[meta["key"]]
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert mask.dtype == torch.int64 and mask.shape == (64, 64)  # class ids, never RGB
        np.testing.assert_array_equal(mask.numpy(), ref_mask)
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), ref_image)
        assert meta["prompt"] == prompt
        seen.add(meta["key"])
    assert seen == set(ref) and len(ref) >= 8


def test_dataloader_workers_and_nodes_each_read_every_sample_once(tiny_dataset, monkeypatch):
    keys = set(reference(tiny_dataset))
    loader = torch.utils.data.DataLoader(training_dataset(tiny_dataset, shuffle=8), batch_size=None, num_workers=2)
    read = [meta["key"] for _, _, meta in loader]
    assert sorted(read) == sorted(keys)
    per_node = []
    for rank in (0, 1):  # webdataset takes the node from RANK/WORLD_SIZE when torch.distributed is not set up
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_node.append([meta["key"] for _, _, meta in training_dataset(tiny_dataset, shuffle=8, seed=5)])
    assert per_node[0] and per_node[1] and not set(per_node[0]) & set(per_node[1])
    assert sorted(per_node[0] + per_node[1]) == sorted(keys)


def test_plain_webdataset_reads_it(tiny_dataset):
    ref = reference(tiny_dataset)
    shards = [str(p) for p in finished_shards(tiny_dataset / "data")]
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("rgb8"))
    assert {s["__key__"] for s in samples} == set(ref)
    for s in samples:
        assert s["json"]["prompt"] == ref[s["__key__"]][2]
        np.testing.assert_array_equal(s["jpg"], ref[s["__key__"]][0])


def test_wids_reads_it_by_index_through_the_index_the_run_wrote(tiny_dataset):
    import wids

    ref = reference(tiny_dataset)
    index = json.loads((tiny_dataset / "data" / WIDS_INDEX).read_text())
    stats = [json.loads(p.read_text()) for p in sorted((tiny_dataset / "data").glob("*.stats.json"))]
    assert [s["nsamples"] for s in index["shardlist"]] == [s["written"] for s in stats]
    plain = wids.ShardListDataset(str(tiny_dataset / "data" / WIDS_INDEX), localname=lambda url: url)
    ours = wids_dataset(tiny_dataset)
    assert len(plain) == len(ours) == len(ref)
    for i in (0, len(ref) - 1, 5):
        sample = plain[i]
        key = sample["__key__"]
        np.testing.assert_array_equal(np.array(sample[".seg.png"]), ref[key][1])
        assert sample[".json"]["prompt"] == ref[key][2]
        np.testing.assert_array_equal(ours[i]["seg.png"], ref[key][1])


def test_hugging_face_datasets_webdataset_builder_reads_it(tiny_dataset, tmp_path):
    import datasets

    ref = reference(tiny_dataset)
    shards = [str(p) for p in finished_shards(tiny_dataset / "data")]
    ds = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(ref)
    for row in ds:
        mask = np.array(row["seg.png"])
        assert mask.ndim == 2
        np.testing.assert_array_equal(mask, ref[row["__key__"]][1])
        assert row["json"]["prompt"] == ref[row["__key__"]][2]


def test_ray_data_read_webdataset_reads_it(tiny_dataset, ray_cluster):
    import ray

    ref = reference(tiny_dataset)
    shards = [str(p) for p in finished_shards(tiny_dataset / "data")]
    rows = ray.data.read_webdataset(shards).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(ref)
    for row in rows:
        assert row["seg.png"].ndim == 2
        np.testing.assert_array_equal(row["seg.png"], ref[row["__key__"]][1])
        assert row["json"]["prompt"] == ref[row["__key__"]][2]
