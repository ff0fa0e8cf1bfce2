"""Ray executor: shards on a pool of model actors; encoding and writing in CPU-only tasks.

Each actor holds one ShardWorker, so its models load once, in the actor, and never travel through
the object store. For a shard, the actor runs generation, feature capture and labelling of every
batch in its own process (features never leave its device) and returns the labelled samples as
arrays. A CPU task (no GPU) encodes them and commits the shard atomically, while the actor starts
its next shard. The driver keeps every actor busy, retries a shard whose actor raised or died, and
sums the actors' batch-by-batch progress into one bar.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import Counter, deque

import ray
from ray.exceptions import RayError, RayTaskError

from pipeline.config import ConfigError, RunConfig
from pipeline.executors import ExecutionReport, Executor, ExecutorSettings
from pipeline.plan import ShardTask
from pipeline.workers import ProgressFn, ShardWorker, commit_shard
from stages.weights import WeightsMissingError

FORWARDED_ENV = ("DATAGEN_", "HF_")  # cache, offline mode and test hooks reach the workers
POLL_SECONDS = 0.2


def connect(address: str | None, **local_options) -> str:
    """Join the cluster at ``address`` ("auto", "ray://host:port", a GCS address), or start a local
    one (``local_options``: more ``ray.init`` arguments, e.g. ``num_cpus``); its GCS address."""
    if not ray.is_initialized():
        options = {"include_dashboard": False, **local_options} if address is None else {}
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **options)
    return ray.get_runtime_context().gcs_address


def disconnect() -> None:
    """Leave the cluster (and stop a local instance this process started)."""
    ray.shutdown()


@ray.remote(num_cpus=0)
class ProgressCounter:
    """Samples finished per (shard, attempt), as the actors report them batch by batch."""

    def __init__(self):
        self.done: Counter = Counter()

    def add(self, shard_id: int, attempt: int, count: int) -> None:
        self.done[shard_id, attempt] += count

    def snapshot(self) -> dict:
        return dict(self.done)


@ray.remote
class ShardActor:
    """A model worker: a ShardWorker whose models load on its first shard and stay for the rest."""

    def __init__(self, config: RunConfig, progress: str):
        self.worker = ShardWorker(config)
        self.progress = ray.get_actor(progress)  # by name: a restarted actor needs no stored handle

    def ready(self) -> None:
        """Answers once the actor is up (after a restart, too)."""

    def compute(self, task: ShardTask, attempt: int):
        return self.worker.compute(task, lambda k: self.progress.add.remote(task.shard_id, attempt, k))


def _reason(err: RayError) -> str:
    """One line for a shard's failure: the worker's own exception, or how the worker died."""
    cause = err.cause if isinstance(err, RayTaskError) and err.cause is not None else err
    if isinstance(cause, WeightsMissingError):
        raise cause
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0]}"[:300]


class RayExecutor(Executor):
    def __init__(self, settings: ExecutorSettings):
        super().__init__(settings.retries)
        self.settings = settings

    def _pool_size(self, n_tasks: int) -> tuple[int, float]:
        """(actors, GPUs per actor) for this cluster; ConfigError when the cluster cannot host one."""
        s, resources = self.settings, ray.cluster_resources()
        cpus, gpus_here = resources.get("CPU", 0), resources.get("GPU", 0)
        gpus = s.gpus_per_worker if s.gpus_per_worker is not None else (1.0 if gpus_here else 0.0)
        if gpus > gpus_here or s.cpus_per_worker > cpus or s.encode_cpus > cpus:
            raise ConfigError(f"the Ray cluster has {cpus:g} CPUs and {gpus_here:g} GPUs: it cannot host a "
                              f"worker with {s.cpus_per_worker:g} CPUs and {gpus:g} GPUs, or an encoding task "
                              f"with {s.encode_cpus:g} CPUs; lower --gpus-per-worker/--cpus-per-worker/--encode-cpus")
        workers = s.workers or (int(gpus_here // gpus) if gpus else int((cpus - s.encode_cpus) // s.cpus_per_worker))
        return max(1, min(workers, n_tasks)), gpus

    def run(self, tasks: list[ShardTask], config: RunConfig, on_samples: ProgressFn) -> ExecutionReport:
        if not tasks:
            return ExecutionReport()
        connect(self.settings.ray_address)
        n_workers, gpus = self._pool_size(len(tasks))
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        progress_name = f"datagen-progress-{uuid.uuid4().hex}"
        progress = ProgressCounter.options(name=progress_name).remote()
        actors = [ShardActor.options(num_cpus=self.settings.cpus_per_worker, num_gpus=gpus, max_restarts=-1,
                                     max_task_retries=0, runtime_env={"env_vars": env})
                  .remote(config, progress_name) for _ in range(n_workers)]
        commit = ray.remote(commit_shard).options(num_cpus=self.settings.encode_cpus, num_gpus=0, max_retries=0)
        try:
            return self._schedule(tasks, config, on_samples, actors, commit, progress)
        finally:
            for actor in (*actors, progress):
                ray.kill(actor)

    def _schedule(self, tasks, config, on_samples, actors, commit, progress) -> ExecutionReport:
        report, queue, attempts, idle = ExecutionReport(), deque(tasks), Counter(), list(actors)
        computing, probing, committing = {}, {}, {}  # compute/probe ref -> actor; commit ref -> task
        finished: set[int] = set()
        committed_samples = shown = 0
        while queue or committing:
            while idle and queue:
                task, actor = queue.popleft(), idle.pop()
                result = actor.compute.remote(task, attempts[task.shard_id])
                computing[result] = actor
                committing[commit.remote(result, config)] = task  # runs once the samples exist
            refs = [*computing, *probing, *committing]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_SECONDS, fetch_local=False)
            for ref in ready:
                if ref in computing:  # done or died: the actor gets its next shard once it answers
                    actor = computing.pop(ref)
                    probing[actor.ready.remote()] = actor
                    continue
                if ref in probing:
                    actor = probing.pop(ref)
                    try:
                        ray.get(ref)
                        idle.append(actor)
                    except RayError:  # still restarting after its worker died: ask again shortly
                        time.sleep(POLL_SECONDS)
                        probing[actor.ready.remote()] = actor
                    continue
                task = committing.pop(ref)
                try:
                    report.stats.append(ray.get(ref))
                except RayError as err:
                    attempts[task.shard_id] += 1
                    if attempts[task.shard_id] > self.retries:
                        report.failed_shards[task.shard_id] = _reason(err)
                    else:
                        queue.append(task)
                    continue
                finished.add(task.shard_id)
                committed_samples += task.end - task.start
            counts = ray.get(progress.snapshot.remote())
            in_flight = sum(k for (shard, attempt), k in counts.items()
                            if shard not in finished and attempt == attempts[shard])
            on_samples(committed_samples + in_flight - shown)
            shown = committed_samples + in_flight
        report.stats.sort(key=lambda s: s["shard"])
        return report
