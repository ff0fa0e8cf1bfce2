"""The executor contract, run against both executors, and the failures each must survive.

Every executor must write, for the same tasks, exactly the shards that calling the worker directly
writes (same keys, same bytes), count each sample once in its progress, and report a shard that
keeps failing while finishing the others. Faults are injected through ``DATAGEN_FAULTS``, which
reaches Ray's worker processes too.
"""

import json
import tarfile

import pytest
import torch

from pipeline.config import ConfigError, RunConfig, load_preset
from pipeline.executors import ExecutorSettings, make_executor
from pipeline.faults import FAULTS_ENV
from pipeline.plan import plan_shards
from pipeline.shards import shard_path, stats_path
from pipeline.workers import ShardWorker

N, SHARD = 6, 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Ray gives a 1-CPU worker one torch thread; CPU float sums depend on the thread count, so the
    in-process side uses one too (on a GPU the thread count does not matter)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(out, cache_dir) -> RunConfig:
    preset = load_preset("tiny", {"batch_size": 2, "steps": 2, "shard_size": SHARD})
    return RunConfig(vocab="voc", out=out, preset_name="tiny", preset=preset, n=N, seed=2, cache_dir=cache_dir)


def tasks(folder):
    return plan_shards("oracle", N, SHARD, folder)


def stats(folder, shard_id) -> dict:
    return {k: v for k, v in json.loads(stats_path(folder, shard_id).read_text()).items() if k != "seconds"}


def keys(folder, shard_id) -> list[str]:
    with tarfile.open(shard_path(folder, shard_id)) as tar:
        return sorted({name.split(".")[0] for name in tar.getnames()})


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """Shards made by calling the worker directly, one after another: what every executor must write."""
    folder = tmp_path_factory.mktemp("reference")
    worker = ShardWorker(make_config(folder, cache_dir))
    for task in tasks(folder):
        worker.process(task)
    return folder


@pytest.fixture(params=["local", "ray"])
def executor(request):
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return make_executor(ExecutorSettings(kind=request.param, retries=1))


@pytest.fixture
def ray_executor(ray_cluster):
    """Failure handling in process is tested in test_workers.py; these are the same cases on Ray."""
    return make_executor(ExecutorSettings(kind="ray", retries=1))


def assert_same_shards(folder, reference, shard_ids):
    for sid in shard_ids:
        assert shard_path(folder, sid).read_bytes() == shard_path(reference, sid).read_bytes(), sid
        assert stats(folder, sid) == stats(reference, sid)
    assert list(folder.glob("*.tmp*")) == []


def test_executor_writes_what_the_worker_writes(executor, reference, tmp_path, cache_dir):
    counted = []
    report = executor.run(tasks(tmp_path), make_config(tmp_path, cache_dir), counted.append)
    assert report.failed_shards == {} and [s["shard"] for s in report.stats] == [0, 1, 2]
    assert sum(counted) == N
    assert_same_shards(tmp_path, reference, [0, 1, 2])


def test_a_sample_that_raises_is_recorded_and_the_run_goes_on(ray_executor, reference, tmp_path, cache_dir,
                                                               monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"raise_samples": [3]}))
    report = ray_executor.run(tasks(tmp_path), make_config(tmp_path, cache_dir), lambda k: None)
    assert report.failed_shards == {}
    failures = stats(tmp_path, 1)["failures"]
    assert {"key": "000000000003", "reason": "error: RuntimeError: injected fault in sample 3"} in failures
    assert "000000000003" not in keys(tmp_path, 1)
    assert_same_shards(tmp_path, reference, [0, 2])


def test_a_shard_that_keeps_failing_is_reported_and_the_rest_is_intact(ray_executor, reference, tmp_path, cache_dir,
                                                                       monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"fail_shards": [1]}))
    counted = []
    report = ray_executor.run(tasks(tmp_path), make_config(tmp_path, cache_dir), counted.append)
    assert report.failed_shards == {1: "OSError: injected fault in shard 1"}
    assert [s["shard"] for s in report.stats] == [0, 2] and sum(counted) == 4
    assert not shard_path(tmp_path, 1).exists() and not stats_path(tmp_path, 1).exists()
    assert_same_shards(tmp_path, reference, [0, 2])


def test_a_worker_killed_mid_shard_is_replaced_and_the_shard_redone_once(ray_executor, reference, tmp_path,
                                                                        cache_dir, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"kill_worker": {"shard": 1, "marker": str(marker)}}))
    out = tmp_path / "out"
    out.mkdir()
    counted = []
    report = ray_executor.run(tasks(out), make_config(out, cache_dir), counted.append)
    assert marker.exists(), "the worker was never killed"
    assert report.failed_shards == {} and sum(counted) == N
    assert keys(out, 1) == keys(reference, 1)  # no duplicate samples
    assert_same_shards(out, reference, [0, 1, 2])


def test_a_cluster_too_small_for_one_worker_is_refused(ray_cluster, tmp_path, cache_dir):
    executor = make_executor(ExecutorSettings(kind="ray", gpus_per_worker=1))
    with pytest.raises(ConfigError, match="cluster has 2 CPUs and 0 GPUs: it cannot host a worker"):
        executor.run(tasks(tmp_path), make_config(tmp_path, cache_dir), lambda k: None)
