"""Shard planning: which samples each shard holds and which shards still need work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.dataset.layout import Phase
from pipeline.dataset.shards import finished_stats_by_id, whole_stats


@dataclass(frozen=True)
class ShardTask:
    phase: Phase  # ORACLE (phase A) or LABEL (phase C): the phases that write shards
    shard_id: int
    start: int  # first sample index
    end: int  # one past the last sample index
    folder: Path  # or an object-store location (``pipeline.dataset.location``)

    @property
    def indices(self) -> range:
        return range(self.start, self.end)


def plan_shards(phase: Phase, n: int, shard_size: int, folder: Path) -> list[ShardTask]:
    """Shard j holds samples [j*S, min((j+1)*S, n))."""
    return [ShardTask(Phase(phase), j, start, min(start + shard_size, n), folder)
            for j, start in enumerate(range(0, n, shard_size))]


ERRORED = "error: "  # failure reasons of samples that raised (filtered samples have other reasons)


def _written(tasks: list[ShardTask]) -> list[tuple[ShardTask, dict | None]]:
    """Each task with the stats of its finished shard (None when there is none, or it was written for
    another sample range); each folder is listed once, however many shards it holds."""
    found = {folder: finished_stats_by_id(folder) for folder in {task.folder for task in tasks}}

    def stats(task: ShardTask) -> dict | None:
        s = found[task.folder].get(task.shard_id)
        return s if whole_stats(s) and (s["start"], s["end"]) == (task.start, task.end) else None

    return [(task, stats(task)) for task in tasks]


def missing(tasks: list[ShardTask]) -> list[ShardTask]:
    """Tasks whose shard is missing, unfinished (damaged stats included), or was written for another sample range."""
    return [task for task, stats in _written(tasks) if stats is None]


def pending(tasks: list[ShardTask]) -> list[ShardTask]:
    """Missing shards, and shards with samples that raised: a rerun retries those samples."""
    return [task for task, stats in _written(tasks) if stats is None or errored_samples(stats)]


def errored_samples(stats: dict) -> int:
    return sum(count for reason, count in stats.get("failed", {}).items() if reason.startswith(ERRORED))
