"""Fault injection for the reliability tests, read from the environment so that it reaches worker
processes on every executor. Unset (always, outside tests), nothing happens.

``DATAGEN_FAULTS='{"raise_samples": [3], "fail_shards": [1], "kill_worker": {"shard": 0, "marker": PATH},
"fail_start": true}'``
- ``raise_samples``: labelling these sample indices raises (recorded in the shard stats);
- ``fail_shards``: computing these shards raises on every attempt (the executor reports them);
- ``kill_worker``: the worker process SIGKILLs itself mid-shard, once (``marker`` is created first);
- ``kill_writer``: the shard's writer SIGKILLs its process once every sample went into the shard's
  temporary file, before it is closed and renamed, once (in process: the writer thread, while the next
  shard computes);
- ``pause_writer``: the shard's writer creates ``marker``, then waits until it is removed (at most
  ``seconds``) before writing: a signal sent meanwhile finds the shard in flight;
- ``kill_training``: grounding training SIGKILLs its process right after the resumable checkpoint at
  ``step``, once;
- ``fail_start``: a Ray model worker raises while starting, every time.
``kill_worker``, ``kill_writer`` and ``pause_writer`` take an optional ``phase`` (``oracle`` or
``label``): then only that phase's shard of that number.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

FAULTS_ENV = "DATAGEN_FAULTS"


def _faults() -> dict:
    raw = os.environ.get(FAULTS_ENV)
    return json.loads(raw) if raw else {}


def _shard_fault(name: str, shard_id: int, phase: str) -> dict | None:
    fault = _faults().get(name)
    if fault and fault["shard"] == shard_id and fault.get("phase", phase) == phase:
        return fault
    return None


def _kill_once(marker: str) -> None:
    if not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def sample_fault(index: int) -> None:
    if index in _faults().get("raise_samples", ()):
        raise RuntimeError(f"injected fault in sample {index}")


def shard_fault(shard_id: int) -> None:
    if shard_id in _faults().get("fail_shards", ()):
        raise OSError(f"injected fault in shard {shard_id}")


def kill_fault(shard_id: int, phase: str) -> None:
    if kill := _shard_fault("kill_worker", shard_id, phase):
        _kill_once(kill["marker"])


def writer_fault(shard_id: int, phase: str, samples: list[dict]) -> Iterable[dict]:
    """``samples`` as the shard's writer takes them, paused or killed where the faults say."""
    if pause := _shard_fault("pause_writer", shard_id, phase):
        marker, until = Path(pause["marker"]), time.time() + pause["seconds"]
        marker.touch()
        while marker.exists() and time.time() < until:
            time.sleep(0.05)
    kill = _shard_fault("kill_writer", shard_id, phase)
    return _killed_when_written(samples, kill["marker"]) if kill else samples


def _killed_when_written(samples: list[dict], marker: str) -> Iterator[dict]:
    yield from samples
    _kill_once(marker)  # the writer asked for more: every sample is in the temporary


def training_fault(step: int) -> None:
    kill = _faults().get("kill_training")
    if kill and kill["step"] == step:
        _kill_once(kill["marker"])


def start_fault() -> None:
    if _faults().get("fail_start"):
        raise RuntimeError("injected fault at worker start")
