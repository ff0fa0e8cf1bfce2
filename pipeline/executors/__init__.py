"""Executors run shard tasks on workers. All executors give the same shards for the same tasks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pipeline.config import RunConfig
from pipeline.plan import ShardTask
from pipeline.workers import ProgressFn


@dataclass
class ExecutionReport:
    stats: list[dict] = field(default_factory=list)
    failed_shards: dict[int, str] = field(default_factory=dict)  # shard id -> last error


class Executor(ABC):
    """Runs every task to a finished shard, retrying a failing shard up to ``retries`` times."""

    def __init__(self, retries: int = 2):
        self.retries = retries

    @abstractmethod
    def run(self, tasks: list[ShardTask], config: RunConfig, on_samples: ProgressFn) -> ExecutionReport:
        ...
