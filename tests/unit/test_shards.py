import json
import os

import numpy as np
import pytest

from pipeline.dataset.plan import pending, plan_shards
from pipeline.dataset.reader import open_dataset
from pipeline.dataset.shards import encode_mask, finished_shards, read_stats, shard_path, stats_path, write_shard


def _samples(n):
    return [{"__key__": f"{i:012d}", "json": json.dumps({"i": i}).encode(),
             "seg.png": encode_mask(np.full((4, 4), i, np.uint8))} for i in range(n)]


def _stats(shard, start, end):
    """What a run writes beside a finished shard (the counts a rerun trusts)."""
    return {"shard": shard, "start": start, "end": end, "planned": end - start, "written": end - start, "failed": {}}


def test_plan_covers_every_sample_once(tmp_path):
    tasks = plan_shards("label", 10, 4, tmp_path)
    assert [(t.start, t.end) for t in tasks] == [(0, 4), (4, 8), (8, 10)]


def test_written_shard_reads_back_and_is_byte_identical(tmp_path):
    (tmp_path / "a").mkdir()
    write_shard(tmp_path / "a", 0, _samples(3), {"start": 0, "end": 3})
    write_shard(tmp_path, 0, _samples(3), {"start": 0, "end": 3})
    assert shard_path(tmp_path, 0).read_bytes() == shard_path(tmp_path / "a", 0).read_bytes()
    got = list(open_dataset(str(shard_path(tmp_path, 0))))
    assert [s["__key__"] for s in got] == ["000000000000", "000000000001", "000000000002"]
    assert got[2]["seg.png"].dtype == np.uint8
    assert got[2]["seg.png"].tolist() == np.full((4, 4), 2).tolist()  # indices, not RGB
    assert list(tmp_path.glob("*.tmp*")) == []


def test_a_shard_without_stats_does_not_exist(tmp_path):
    tasks = plan_shards("label", 8, 4, tmp_path)
    write_shard(tmp_path, 0, _samples(4), _stats(0, 0, 4))
    write_shard(tmp_path, 1, _samples(4), _stats(1, 4, 8))
    stats_path(tmp_path, 1).unlink()  # killed between the tar rename and the stats write
    assert read_stats(tmp_path, 1) is None
    assert [t.shard_id for t in pending(tasks)] == [1]
    assert [p.name for p in finished_shards(tmp_path)] == ["shard-000000.tar"]


def test_shard_written_for_another_range_is_redone(tmp_path):
    write_shard(tmp_path, 0, _samples(2), _stats(0, 0, 2))
    assert [t.shard_id for t in pending(plan_shards("label", 4, 4, tmp_path))] == [0]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError):
        write_shard(tmp_path, 0, [{"__key__": "x", "json": object()}], {"start": 0, "end": 1})
    assert list(tmp_path.iterdir()) == []


def test_finding_what_to_resume_lists_each_folder_once(tmp_path, monkeypatch):
    """On an object store each listing is a request: a resume lists the folder once, not once per shard."""
    import pipeline.dataset.shards as shards

    for shard in range(3):
        write_shard(tmp_path, shard, _samples(2), _stats(shard, 2 * shard, 2 * shard + 2))
    listed = []
    monkeypatch.setattr(shards, "names", lambda folder: listed.append(folder) or set(os.listdir(folder)))
    assert [t.shard_id for t in pending(plan_shards("label", 10, 2, tmp_path))] == [3, 4]
    assert listed == [tmp_path]
