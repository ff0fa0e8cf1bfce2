"""Shard workers and the in-process executor: failures are isolated, recorded and retried."""

import json

import pytest

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.plan import errored_samples, missing, pending, plan_shards
from pipeline.dataset.shards import read_stats
from pipeline.run.executors.local import LocalExecutor
from pipeline.run.workers import ShardWorker


@pytest.fixture
def config(tmp_path, cache_dir):
    preset = load_preset("tiny", {"batch_size": 2, "steps": 2})
    return RunConfig(vocab="voc", out=tmp_path, preset_name="tiny", preset=preset, n=4, seed=1,
                     cache_dir=cache_dir)


class FailingSample(ShardWorker):
    """Raises inside labelling for one sample index (a labeler error on one sample)."""

    bad_index = 1

    def _oracle_batch(self, batch):
        if any(spec.index == self.bad_index for spec in batch):
            raise RuntimeError("boom")
        return super()._oracle_batch(batch)


@pytest.mark.parametrize("n, bad", [(4, 1), (3, 2)])  # batches of 2; with n=3 the bad sample is alone
def test_a_failing_sample_is_recorded_and_the_shard_is_written(config, n, bad):
    task = plan_shards("oracle", n, n, config.out)[0]
    worker = FailingSample(config)
    worker.bad_index = bad
    stats = worker.process(task)
    assert {"key": f"{bad:012d}", "reason": "error: RuntimeError: boom"} in stats["failures"]
    assert stats["written"] + sum(stats["failed"].values()) == n
    assert read_stats(config.out, 0) == json.loads(json.dumps(stats))


def test_samples_that_raised_are_retried_by_the_next_run_filtered_ones_are_not(config):
    class DeviceLost(ShardWorker):
        def _oracle_batch(self, batch):
            raise RuntimeError("device lost")

    tasks = plan_shards("oracle", 3, 3, config.out)
    stats = DeviceLost(config).process(tasks[0])
    assert stats["written"] == 0 and errored_samples(stats) == 3
    assert pending(tasks) == tasks and missing(tasks) == []  # written, yet retried on a rerun

    stats = ShardWorker(config).process(tasks[0])
    assert errored_samples(stats) == 0 and stats["written"] + sum(stats["failed"].values()) == 3
    assert pending(tasks) == []


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


def test_progress_is_not_counted_twice_when_a_shard_is_retried(config):
    class FailsAfterSamples(ShardWorker):
        calls = 0

        def process(self, task, on_samples=None):
            on_samples(2)
            FailsAfterSamples.calls += 1
            if FailsAfterSamples.calls == 1:
                raise OSError("late failure")
            return super().process(task, lambda k: None)

    counted = []
    tasks = plan_shards("oracle", 2, 2, config.out)
    LocalExecutor(retries=1, worker=FailsAfterSamples(config)).run(tasks, config, counted.append)
    assert sum(counted) == 2
