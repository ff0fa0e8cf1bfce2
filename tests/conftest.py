"""Shared fixtures: the tiny preset, built once per test session in a temporary cache.

Tests live in ``unit/`` (fast: no CLI run, no Ray, no subprocess, no training beyond a few steps;
``make test-fast``) or ``e2e/`` (CLI runs, Ray, subprocesses, training jobs); each test is marked
by its folder, so ``pytest -m unit`` selects the fast ones. Helper modules shared by both (such as
``zs3_fixtures``) stay here, importable through ``pythonpath`` in pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub

TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = ("unit", "e2e")


def pytest_collection_modifyitems(config, items):
    """Mark each test ``unit`` or ``e2e`` by its folder; a test in neither folder is an error, so
    none escapes both ``-m unit`` and ``-m e2e``."""
    for item in items:
        path = Path(item.path).resolve()
        if not path.is_relative_to(TESTS):
            continue
        folder = path.relative_to(TESTS).parts[0]
        if folder not in FOLDER_MARKERS:
            raise pytest.UsageError(f"{item.nodeid}: tests go in tests/unit (fast) or tests/e2e (end-to-end)")
        item.add_marker(folder)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for a CPU-bound training loop. torch's OpenMP threads spin-wait for each
    other at every operation, so on a CPU shared with other processes (2-core CI runners, the Ray
    cluster the e2e tests leave running) one descheduled thread stalls the rest. One thread costs at most
    the parallel speed-up on an idle machine; the tests using it assert thresholds, not bytes, and hold
    with either thread count."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def one_torch_thread_per_module():
    """``one_torch_thread`` for a whole module, before its module-scoped fixtures run: for modules whose
    fixtures train or run datagen (``pytestmark = pytest.mark.usefixtures(...)``), and for comparisons
    with a Ray worker, which runs one torch thread (CPU float sums depend on the thread count)."""
    yield from _one_thread()


def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("datagen-cache")
    os.environ["DATAGEN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(cache_dir):
    from pipeline.local_sources import tiny_preset_dir

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


@dataclass
class CliResult:
    """One in-process ``datagen`` run: its exit code, stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str

    def one_line(self) -> str:
        """The one non-blank line of stderr (a user's error message); fails the test on more."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, self.stderr
        return lines[0]


@pytest.fixture
def datagen(capsys, monkeypatch):
    """Run the CLI in this process, as ``datagen ARGS``: a ``CliResult``."""
    from pipeline.cli import main

    def run(*args) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["datagen", *map(str, args)])
        with pytest.raises(SystemExit) as exited:
            main()
        out, err = capsys.readouterr()
        return CliResult(exited.value.code or 0, out, err)

    return run


@pytest.fixture
def copy(tiny_dataset, tmp_path):
    """A copy of the shared tiny dataset, free to damage."""
    return shutil.copytree(tiny_dataset, tmp_path / "copy")
