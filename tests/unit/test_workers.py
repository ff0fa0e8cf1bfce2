"""Shard workers and the in-process executor: failures are isolated, recorded and retried."""

import json
import threading

import pytest

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.plan import errored_samples, missing, pending, plan_shards
from pipeline.dataset.shards import read_stats
from pipeline.run.executors import local
from pipeline.run.executors.local import LocalExecutor
from pipeline.run.workers import ShardResult, ShardWorker, commit_shard


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

    def compute(self, task, on_samples=None):
        FlakyShard.calls += 1
        if FlakyShard.calls == 1:
            raise OSError("device hiccup")
        return super().compute(task, on_samples)


def test_executor_retries_a_failing_shard_then_reports_one_that_keeps_failing(config):
    tasks = plan_shards("oracle", 2, 2, config.out)
    report = LocalExecutor(retries=1, worker=FlakyShard(config)).run(tasks, config, lambda k: None)
    assert report.failed_shards == {} and read_stats(config.out, 0) is not None

    class Broken(ShardWorker):
        def compute(self, task, on_samples=None):
            raise OSError("always")

    report = LocalExecutor(retries=2, worker=Broken(config)).run(tasks, config, lambda k: None)
    assert report.failed_shards == {0: "OSError: always"}


def test_progress_is_not_counted_twice_when_a_shard_is_retried(config):
    class FailsAfterSamples(ShardWorker):
        calls = 0

        def compute(self, task, on_samples=None):
            on_samples(2)
            FailsAfterSamples.calls += 1
            if FailsAfterSamples.calls == 1:
                raise OSError("late failure")
            return super().compute(task, lambda k: None)

    counted = []
    tasks = plan_shards("oracle", 2, 2, config.out)
    LocalExecutor(retries=1, worker=FailsAfterSamples(config)).run(tasks, config, counted.append)
    assert sum(counted) == 2


class Recording(ShardWorker):
    """Records when each shard's model work starts; computes an empty shard at once (what is tested here
    is the executor's order of work, not the models: the executors' contract test compares bytes)."""

    def __init__(self, config, events):
        super().__init__(config)
        self.events = events

    def compute(self, task, on_samples=None):
        self.events.append(("compute", task.shard_id))
        if on_samples:
            on_samples(task.end - task.start)
        return ShardResult(task, [], [], 0.0)


def test_a_shard_is_written_while_the_next_computes_and_at_most_one_waits(config, monkeypatch):
    """The writer overlaps the next shard's model work (shard 0's write waits for shard 1's compute to
    start: done one after another, this would time out), and no shard computes while two are unwritten."""
    events, second_started = [], threading.Event()

    def commit(result, cfg):
        if result.task.shard_id == 0:
            assert second_started.wait(60), "shard 1 did not compute while shard 0 was being written"
        events.append(("written", result.task.shard_id))
        return commit_shard(result, cfg)

    class Worker(Recording):
        def compute(self, task, on_samples=None):
            if task.shard_id == 1:
                second_started.set()
            return super().compute(task, on_samples)

    monkeypatch.setattr(local, "commit_shard", commit)
    tasks = plan_shards("oracle", 6, 2, config.out)
    report = LocalExecutor(worker=Worker(config, events)).run(tasks, config, lambda k: None)
    assert [s["shard"] for s in report.stats] == [0, 1, 2] and report.failed_shards == {}
    assert events.index(("written", 0)) > events.index(("compute", 1))
    assert events.index(("compute", 2)) > events.index(("written", 0))
    assert all(read_stats(config.out, t.shard_id) is not None for t in tasks)


def test_a_failed_write_is_retried_from_the_computed_samples(config, monkeypatch):
    events, failures = [], {0: 1, 1: 99}  # shard 0 fails its first write, shard 1 every write

    def commit(result, cfg):
        if failures.get(result.task.shard_id, 0) > 0:
            failures[result.task.shard_id] -= 1
            raise OSError("disk full")
        return commit_shard(result, cfg)

    monkeypatch.setattr(local, "commit_shard", commit)
    counted = []
    tasks = plan_shards("oracle", 6, 2, config.out)
    report = LocalExecutor(retries=2, worker=Recording(config, events)).run(tasks, config, counted.append)
    assert report.failed_shards == {1: "OSError: disk full"} and [s["shard"] for s in report.stats] == [0, 2]
    assert [e for e in events if e[0] == "compute"] == [("compute", 0), ("compute", 1), ("compute", 2)]
    assert sum(counted) == 4 and read_stats(config.out, 1) is None


def test_an_interrupt_still_writes_the_shard_already_computed(config):
    class InterruptedAtShard1(Recording):
        def compute(self, task, on_samples=None):
            if task.shard_id == 1:
                raise KeyboardInterrupt
            return super().compute(task, on_samples)

    tasks = plan_shards("oracle", 6, 2, config.out)
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(worker=InterruptedAtShard1(config, [])).run(tasks, config, lambda k: None)
    assert read_stats(config.out, 0) is not None and read_stats(config.out, 1) is None
