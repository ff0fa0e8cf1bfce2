"""In-process executor: one worker in this process, shards one after another."""

from __future__ import annotations

from pipeline.config import RunConfig
from pipeline.dataset.plan import ShardTask
from pipeline.run.executors import ExecutionReport, Executor
from pipeline.run.workers import ProgressFn, ShardWorker
from stages.weights import WeightsMissingError


class LocalExecutor(Executor):
    def __init__(self, retries: int = 2, worker: ShardWorker | None = None):
        super().__init__(retries)
        self._worker = worker

    def run(self, tasks: list[ShardTask], config: RunConfig, on_samples: ProgressFn) -> ExecutionReport:
        report = ExecutionReport()
        for task in tasks:
            for _ in range(self.retries + 1):
                done = []

                def counted(k: int) -> None:
                    done.append(k)
                    on_samples(k)

                try:
                    self._worker = self._worker or ShardWorker(config)
                    report.stats.append(self._worker.process(task, counted))
                    report.failed_shards.pop(task.shard_id, None)
                    break
                except (WeightsMissingError, KeyboardInterrupt):
                    raise
                except Exception as err:  # noqa: BLE001 - retried, then reported
                    on_samples(-sum(done))  # the retry counts these samples again
                    report.failed_shards[task.shard_id] = f"{type(err).__name__}: {err}"
        return report
