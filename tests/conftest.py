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
    from stages.models import tiny_preset_dir

    return tiny_preset_dir(cache_dir, 0, 64)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_dir):
    from stages.models import load_stable_diffusion

    return load_stable_diffusion(str(tiny_dir))


@pytest.fixture(scope="session")
def voc():
    from pipeline.config import resolve_vocabulary

    return resolve_vocabulary("voc")
