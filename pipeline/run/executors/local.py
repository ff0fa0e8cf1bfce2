"""In-process executor: one worker in this process; a shard is encoded and written while the next computes.

The model work of the shards runs in this thread, one after another. Each computed shard goes to one
writer thread (encoding, RLEs, the atomic write: CPU work) while the models compute the next shard.
The writer is bounded: a computed shard waits for the previous one's commit before it is handed
over, so at most two shards' samples are in memory whatever the number of shards. Shards are
committed in order, with the same bytes as ``ShardWorker.process``; a shard whose model work raises
is computed again, and one whose commit raises is committed again from its computed samples, up to
``retries`` times each.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from pipeline.config import RunConfig
from pipeline.dataset.plan import ShardTask
from pipeline.run.executors import ExecutionReport, Executor
from pipeline.run.workers import ProgressFn, ShardResult, ShardWorker, commit_shard
from stages.weights import WeightsMissingError


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class LocalExecutor(Executor):
    def __init__(self, retries: int = 2, worker: ShardWorker | None = None):
        super().__init__(retries)
        self._worker = worker

    def run(self, tasks: list[ShardTask], config: RunConfig, on_samples: ProgressFn) -> ExecutionReport:
        report = ExecutionReport()
        committing: tuple[ShardResult, Future] | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="datagen-writer") as writer:
            try:
                for task in tasks:
                    result = self._compute(task, config, on_samples, report)
                    if committing:  # the bound: one shard at the writer, one computing
                        self._finish(*committing, report, on_samples)
                        committing = None
                    if result is not None:
                        committing = result, writer.submit(self._commit, result, config)
            finally:  # also on an interrupt: a computed shard is still written
                if committing:
                    self._finish(*committing, report, on_samples)
        return report

    def _compute(self, task: ShardTask, config: RunConfig, on_samples: ProgressFn,
                 report: ExecutionReport) -> ShardResult | None:
        """The shard's model work, tried ``retries + 1`` times; None (and the error reported) if it never ran."""
        for _ in range(self.retries + 1):
            done = []

            def counted(k: int) -> None:
                done.append(k)
                on_samples(k)

            try:
                self._worker = self._worker or ShardWorker(config)
                return self._worker.compute(task, counted)
            except (WeightsMissingError, KeyboardInterrupt):
                raise
            except Exception as err:  # noqa: BLE001 - retried, then reported
                on_samples(-sum(done))  # the retry counts these samples again
                report.failed_shards[task.shard_id] = _error(err)
        return None

    def _commit(self, result: ShardResult, config: RunConfig) -> dict:
        """On the writer thread: encode and write the shard, retrying a failed write; its stats."""
        for _ in range(self.retries):
            try:
                return commit_shard(result, config)
            except Exception:  # noqa: BLE001 - a full disk or a lost mount may recover: try again
                continue
        return commit_shard(result, config)  # the last try's error is the shard's

    @staticmethod
    def _finish(result: ShardResult, commit: Future, report: ExecutionReport, on_samples: ProgressFn) -> None:
        """Wait for a shard's commit; its stats, or the shard reported failed and its samples uncounted."""
        shard_id = result.task.shard_id
        try:
            report.stats.append(commit.result())
            report.failed_shards.pop(shard_id, None)
        except Exception as err:  # noqa: BLE001 - the shard is reported, the run goes on
            on_samples(-(result.task.end - result.task.start))
            report.failed_shards[shard_id] = _error(err)
