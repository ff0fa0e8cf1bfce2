"""Executor settings checked before any worker starts: Ray-only flags, and Ray missing."""

import sys

import pytest
from pydantic import ValidationError

from pipeline.config import ConfigError
from pipeline.run.executors import ExecutorSettings, make_executor


def test_ray_flags_without_the_ray_executor_are_refused():
    for flags in ({"workers": 2}, {"gpus_per_worker": 1}, {"cpus_per_worker": 4}, {"encode_cpus": 2},
                  {"ray_address": "auto"}):
        with pytest.raises(ValidationError, match="applies to Ray workers only; add --executor ray"):
            ExecutorSettings(kind="local", **flags)
    ExecutorSettings(kind="local", cpus_per_worker=1, encode_cpus=1)  # the CLI always passes the defaults


def test_the_ray_executor_without_ray_installed_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "pipeline.run.executors.ray_executor", raising=False)
    with pytest.raises(ConfigError, match=r"^--executor ray needs Ray, .*pip install 'datagen\[ray\]'$"):
        make_executor(ExecutorSettings(kind="ray"))


def test_a_ray_run_trains_with_the_thread_count_of_its_workers():
    """Phase B runs in the driver, the shards in Ray workers of --cpus-per-worker threads: training
    takes the workers' count, so a Ray run's checkpoint is an in-process run's with as many threads."""
    import torch

    from pipeline.run.api import torch_threads

    executor = make_executor(ExecutorSettings(kind="ray", cpus_per_worker=3))
    assert executor.torch_threads == 3 and make_executor(ExecutorSettings()).torch_threads is None
    before = torch.get_num_threads()
    with torch_threads(executor.torch_threads):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
