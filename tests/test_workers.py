"""Shard workers and the in-process executor: failures are isolated, recorded and retried."""

import json

import pytest

from pipeline.config import RunConfig, load_preset
from pipeline.executors.local import LocalExecutor
from pipeline.plan import plan_shards
from pipeline.shards import read_stats
from pipeline.workers import ShardWorker


@pytest.fixture
def config(tmp_path, cache_dir):
    preset = load_preset("tiny", {"batch_size": 2, "steps": 2})
    return RunConfig(vocab="voc", out=tmp_path, preset_name="tiny", preset=preset, n=4, seed=1,
                     cache_dir=cache_dir)


class FailingSample(ShardWorker):
    """Raises inside labelling for sample index 1 only (a labeler error on one sample)."""

    def _oracle_batch(self, batch):
        if any(spec.index == 1 for spec in batch):
            raise RuntimeError("boom")
        return super()._oracle_batch(batch)


def test_a_failing_sample_is_recorded_and_the_shard_is_written(config):
    task = plan_shards("oracle", 4, 4, config.out)[0]
    stats = FailingSample(config).process(task)
    assert {"key": "000000000001", "reason": "error: RuntimeError: boom"} in stats["failures"]
    assert stats["written"] + sum(stats["failed"].values()) == 4
    assert read_stats(config.out, 0) == json.loads(json.dumps(stats))


class FlakyShard(ShardWorker):
    calls = 0

    def process(self, task, on_samples=None):
        FlakyShard.calls += 1
        if FlakyShard.calls == 1:
            raise OSError("disk hiccup")
        return super().process(task, on_samples)


def test_executor_retries_a_failing_shard_then_reports_one_that_keeps_failing(config):
    tasks = plan_shards("oracle", 2, 2, config.out)
    report = LocalExecutor(retries=1, worker=FlakyShard(config)).run(tasks, config, lambda k: None)
    assert report.failed_shards == {} and read_stats(config.out, 0) is not None

    class Broken(ShardWorker):
        def process(self, task, on_samples=None):
            raise OSError("always")

    report = LocalExecutor(retries=2, worker=Broken(config)).run(tasks, config, lambda k: None)
    assert report.failed_shards == {0: "OSError: always"}
