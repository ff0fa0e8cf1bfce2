"""The executor contract, run against both executors, and the failures each must survive.

Every executor must write, for the same tasks, exactly the shards that calling the worker directly
writes (same keys, same bytes), count each sample once in its progress, and report a shard that
keeps failing while finishing the others. Faults are injected through ``DATAGEN_FAULTS``, which
reaches Ray's worker processes too.
"""

import json
import tarfile
import threading

import pytest
import torch

from pipeline.config import ConfigError, RunConfig, load_preset
from pipeline.dataset.plan import plan_shards
from pipeline.dataset.shards import shard_path, stats_path
from pipeline.run.executors import ExecutorSettings, make_executor
from pipeline.run.faults import FAULTS_ENV
from pipeline.run.workers import ShardWorker
from stages.weights import WeightsMissingError

N, SHARD = 6, 2


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def make_config(out, cache_dir, **changes) -> RunConfig:
    preset = load_preset("tiny", {"batch_size": 2, "steps": 2, "shard_size": SHARD, **changes.pop("preset", {})})
    return RunConfig(vocab="voc", out=out, preset_name="tiny", preset=preset, n=N, seed=2, cache_dir=cache_dir,
                     **changes)


def run_within(executor, config, seconds=180):
    """What ``executor.run`` returns or raises; the test fails, instead of hanging, if it takes longer."""
    outcome = {}

    def target():
        try:
            outcome["report"] = executor.run(tasks(config.out), config, lambda k: None)
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the run did not end within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["report"]


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
    with pytest.raises(ConfigError, match="cluster has 2 CPUs and 0 GPUs, but no node can host a worker"):
        executor.run(tasks(tmp_path), make_config(tmp_path, cache_dir), lambda k: None)


@pytest.mark.parametrize("settings", [{"workers": 2}, {"cpus_per_worker": 2}, {"encode_cpus": 1.5}])
def test_a_pool_that_leaves_no_cpu_for_encoding_is_refused(ray_cluster, tmp_path, cache_dir, settings):
    """Actors hold their CPUs for the whole run: on 2 CPUs, a pool taking 2 would never see a shard written."""
    executor = make_executor(ExecutorSettings(kind="ray", **settings))
    with pytest.raises(ConfigError, match=r"cluster has 2 CPUs and 0 GPUs: .* do not fit \(at most \d workers\)"):
        run_within(executor, make_config(tmp_path, cache_dir))
    assert list(tmp_path.iterdir()) == []


def test_a_worker_that_cannot_start_ends_the_run_with_its_error(ray_executor, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"fail_start": True}))
    with pytest.raises(ConfigError, match="^a Ray model worker cannot start: RuntimeError: injected fault at worker "
                                          "start$"):
        run_within(ray_executor, make_config(tmp_path, cache_dir))
    assert list(tmp_path.iterdir()) == []


def test_a_device_the_worker_does_not_have_ends_the_run_as_a_config_error(ray_executor, tmp_path, cache_dir):
    device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU: the worker's Runtime refuses it
    with pytest.raises(ConfigError, match=f"^--device {device}: torch sees"):
        run_within(ray_executor, make_config(tmp_path, cache_dir, device=device))


def test_missing_weights_end_the_run_at_once(ray_executor, tmp_path, cache_dir):
    missing = tmp_path / "no-such-model"
    config = make_config(tmp_path / "out", cache_dir, preset={"sd": str(missing)})
    config.out.mkdir()
    with pytest.raises(WeightsMissingError, match=f"Stable Diffusion folder {missing} does not exist"):
        run_within(ray_executor, config)
