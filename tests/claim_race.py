"""Writers racing for the claim of one new output folder, each in a process of its own, released together.

Each writer claims the folder (``claim_output``: the manifest created exclusively) with a config of its
own; ``race`` returns, per folder, each writer's name and its error line, None for the one that claimed
it. Used by tests/e2e/test_claim_races.py (a local folder) and tests/e2e/test_object_store.py (S3).
"""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.dataset.location import location
from pipeline.dataset.manifest import claim_output
from stages.errors import DatagenError

_BARRIER = None  # the writers' barrier, in each writer process


@dataclass
class Owner:
    """A run's claim on an output folder (``manifest.OutputOwner``): ``name`` is its config's fingerprint."""

    out: object
    name: str
    n: int = 0
    cache_dir: Path = Path("/nonexistent")

    def fingerprint(self) -> str:
        return self.name


def _start(barrier, env: dict[str, str], warm_up: str) -> None:
    """A writer process: its environment, and its store client made before the races (not timed by them)."""
    global _BARRIER
    _BARRIER = barrier
    os.environ.update(env)
    location(warm_up).exists()


def _claim(job: tuple[str, str]) -> tuple[str, str | None]:
    url, name = job
    owner = Owner(location(url), name)
    _BARRIER.wait(timeout=120)
    try:
        claim_output(owner, {"fingerprint": name}, labelling=False)
    except DatagenError as err:
        return name, str(err)
    except Exception as err:  # noqa: BLE001 - a loser's error that is not the one line is the test's failure
        return name, f"{type(err).__name__}: {err}"
    return name, None


def race(urls: list[str], writers: int, env: dict[str, str] | None = None) -> list[list[tuple[str, str | None]]]:
    """For each of ``urls`` in turn, ``writers`` processes claiming it at once (a barrier releases them).
    They are forked from a fork server that imported this module and s3fs once (not from this process, whose
    threads, Ray's and the S3 server's among them, a fork would cut off mid-work)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "s3fs"])
    barrier = context.Barrier(writers)
    with context.Pool(writers, initializer=_start, initargs=(barrier, env or {}, urls[0])) as pool:
        return [pool.map(_claim, [(url, f"writer-{k}") for k in range(writers)], chunksize=1) for url in urls]
