"""Shared fixtures: the tiny preset, built once per test session in a temporary cache."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("datagen-cache")
    os.environ["DATAGEN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(cache_dir):
    from pipeline.runtime import tiny_preset_dir

    return tiny_preset_dir(cache_dir, 0, 64)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    from stages.models import load_stable_diffusion

    return load_stable_diffusion(str(tiny_dir))


@pytest.fixture(scope="session")
def voc():
    from pipeline.config import resolve_vocabulary

    return resolve_vocabulary("voc")


@pytest.fixture(scope="session")
def ray_cluster(cache_dir):
    """One local Ray instance for the session, sized for CI; its address, for CLI runs to join.

    No dashboard, no token file in ~/.ray, no usage stats, and its session files in a temporary
    folder (short: Ray's unix socket paths are limited to 107 bytes) removed afterwards.
    """
    import shutil
    import tempfile

    from pipeline.run.executors.ray_executor import connect, disconnect

    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    yield connect(None, num_cpus=2, _temp_dir=temp)
    disconnect()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, cache_dir):
    """A finished tiny-preset dataset (4 shards of 4 samples) for the reader and inspection tests;
    tests that damage it work on a copy."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path_factory.mktemp("dataset") / "tiny"
    result = CliRunner().invoke(app, ["run", "--vocab", "voc", "--n", "16", "--models", "tiny", "--bootstrap-n", "4",
                                      "--train-steps", "3", "--shard-size", "4", "--batch-size", "2", "--seed", "3",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
