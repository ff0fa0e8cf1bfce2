"""Shard planning: which samples each shard holds and which shards still need work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.shards import read_stats


@dataclass(frozen=True)
class ShardTask:
    phase: str  # "oracle" (phase A) or "label" (phase C)
    shard_id: int
    start: int  # first sample index
    end: int  # one past the last sample index
    folder: Path

    @property
    def indices(self) -> range:
        return range(self.start, self.end)


def plan_shards(phase: str, n: int, shard_size: int, folder: Path) -> list[ShardTask]:
    """Shard j holds samples [j*S, min((j+1)*S, n))."""
    return [ShardTask(phase, j, start, min(start + shard_size, n), Path(folder))
            for j, start in enumerate(range(0, n, shard_size))]


def pending(tasks: list[ShardTask]) -> list[ShardTask]:
    """Tasks whose shard is missing, unfinished, or was written for another sample range."""
    todo = []
    for task in tasks:
        stats = read_stats(task.folder, task.shard_id)
        if stats is None or (stats.get("start"), stats.get("end")) != (task.start, task.end):
            todo.append(task)
    return todo
