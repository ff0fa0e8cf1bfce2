"""Fault injection for the reliability tests, read from the environment so that it reaches worker
processes on every executor. Unset (always, outside tests), nothing happens.

``DATAGEN_FAULTS='{"raise_samples": [3], "fail_shards": [1], "kill_worker": {"shard": 0, "marker": PATH},
"fail_start": true}'``
- ``raise_samples``: labelling these sample indices raises (recorded in the shard stats);
- ``fail_shards``: computing these shards raises on every attempt (the executor reports them);
- ``kill_worker``: the worker process SIGKILLs itself mid-shard, once (``marker`` is created first);
- ``fail_start``: a Ray model worker raises while starting, every time.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

FAULTS_ENV = "DATAGEN_FAULTS"


def _faults() -> dict:
    raw = os.environ.get(FAULTS_ENV)
    return json.loads(raw) if raw else {}


def sample_fault(index: int) -> None:
    if index in _faults().get("raise_samples", ()):
        raise RuntimeError(f"injected fault in sample {index}")


def shard_fault(shard_id: int) -> None:
    if shard_id in _faults().get("fail_shards", ()):
        raise OSError(f"injected fault in shard {shard_id}")


def kill_fault(shard_id: int) -> None:
    kill = _faults().get("kill_worker")
    if kill and kill["shard"] == shard_id and not Path(kill["marker"]).exists():
        Path(kill["marker"]).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def start_fault() -> None:
    if _faults().get("fail_start"):
        raise RuntimeError("injected fault at worker start")
