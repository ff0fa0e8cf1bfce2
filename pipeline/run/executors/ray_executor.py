"""Ray executor: shards on a pool of model actors; encoding and writing in CPU-only tasks.

Each actor holds one ShardWorker, so its models load once, in the actor, and never travel through
the object store. For a shard, the actor runs generation, feature capture and labelling of every
batch in its own process (features never leave its device) and returns the labelled samples as
arrays. A CPU task (no GPU) encodes them and commits the shard atomically, while the actor starts
its next shard. The driver keeps every actor busy, retries a shard whose actor raised or died, and
sums the actors' batch-by-batch progress into one bar. A worker that cannot start (bad --device,
missing weights, datagen not importable) or missing weights end the run at once with that error:
retrying them on another shard would fail the same way.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections import Counter, deque

import ray
import torch
from ray.exceptions import RayActorError, RayError, RayTaskError

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset.plan import ShardTask
from pipeline.run import faults
from pipeline.run.executors import ExecutionReport, Executor, ExecutorSettings
from pipeline.run.workers import ProgressFn, ShardWorker, commit_shard
from stages.weights import WeightsMissingError

FORWARDED_ENV = ("DATAGEN_", "HF_")  # cache, offline mode and test hooks reach the workers
POLL_SECONDS = 0.2
MAX_FAILED_PROBES = 20  # an actor that fails this many readiness probes in a row is not coming back
REACH_SECONDS = 5  # Ray itself retries an unreachable address for minutes


def _check_reachable(address: str) -> None:
    """Fail fast (ConnectionError) when ``host:port`` (or ``ray://host:port``) accepts no connection."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS).close()


def connect(address: str | None, **local_options) -> str:
    """Join the cluster at ``address`` ("auto", "ray://host:port", a GCS address), or start a local
    one (``local_options``: more ``ray.init`` arguments, e.g. ``num_cpus``); its GCS address.
    ConfigError when the cluster cannot be reached."""
    if not ray.is_initialized():
        options = {"include_dashboard": False, **local_options} if address is None else {}
        try:
            if address is not None:
                _check_reachable(address)
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, **options)
        except (ConnectionError, OSError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ConfigError(f"cannot reach Ray at {address or 'a new local instance'}: {reason}") from None
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


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


@ray.remote
class ShardActor:
    """A model worker: a ShardWorker whose models load on its first shard and stay for the rest.

    An error while starting is kept and raised by every call instead of killing the actor: Ray would
    not restart an actor whose creation failed, and its calls would fail without the cause."""

    def __init__(self, config: RunConfig, progress: str, torch_threads: int):
        self.start_error: Exception | None = None
        try:
            torch.set_num_threads(torch_threads)  # CPU float sums depend on it: the run's bytes too
            faults.start_fault()
            self.worker = ShardWorker(config)
            self.progress = ray.get_actor(progress)  # by name: a restarted actor needs no stored handle
        except (ConfigError, WeightsMissingError) as err:
            self.start_error = err
        except Exception as err:  # noqa: BLE001 - any other start failure is reported as one line
            self.start_error = ConfigError(f"a Ray model worker cannot start: {type(err).__name__}: "
                                           f"{_first_line(err)}")

    def ready(self) -> None:
        """Answers once the actor is up (after a restart, too); raises the error it could not start with."""
        if self.start_error is not None:
            raise self.start_error

    def compute(self, task: ShardTask, attempt: int):
        self.ready()
        return self.worker.compute(task, lambda k: self.progress.add.remote(task.shard_id, attempt, k))


def _cause(err: RayError) -> BaseException:
    return err.cause if isinstance(err, RayTaskError) and err.cause is not None else err


def _fatal(err: RayError) -> Exception | None:
    """The error that ends the whole run (a worker that cannot start, missing weights), else None."""
    cause = _cause(err)
    if isinstance(cause, (ConfigError, WeightsMissingError)):
        return cause
    if isinstance(cause, RayActorError) and cause.actor_init_failed:  # e.g. datagen not importable there
        return ConfigError(f"a Ray model worker cannot start: {_first_line(cause)}")
    return None


def _reason(err: RayError) -> str:
    """One line for a shard's failure: the worker's own exception, or how the worker died."""
    cause = _cause(err)
    return f"{type(cause).__name__}: {_first_line(cause)}"[:300]


class _Scheduler:
    """One run's shards in flight on a pool of actors.

    A shard is queued, then computed by an idle actor with its commit task submitted at once (Ray starts
    it when the samples exist); a failed commit (the compute failed, or the commit itself) queues the
    shard again until its retries are spent. An actor that finished a shard, or died on it, is probed
    (``ready``) and becomes idle once it answers: a dead one answers once Ray has restarted it."""

    def __init__(self, tasks: list[ShardTask], actors: list, config: RunConfig, commit, progress, retries: int):
        self.config, self.commit, self.progress, self.retries = config, commit, progress, retries
        self.report = ExecutionReport()
        self.queue, self.idle = deque(tasks), list(actors)
        self.attempts: Counter = Counter()  # shard id -> its current attempt (0 the first)
        self.computing: dict = {}  # compute ref -> its actor
        self.probing: dict = {}  # readiness probe ref -> its actor
        self.committing: dict = {}  # commit ref -> its task
        self.failed_probes: Counter = Counter()  # actor -> readiness probes failed in a row
        self.finished: set[int] = set()  # shard ids committed
        self.committed_samples = self.shown = 0

    def run(self, on_samples: ProgressFn) -> ExecutionReport:
        """Until every shard is committed or out of retries: submit, handle what finished, show progress."""
        while self.queue or self.committing:
            self.submit()
            for ref in self.wait():
                self.on_ready(ref)
            self.show_progress(on_samples)
        self.report.stats.sort(key=lambda s: s["shard"])
        return self.report

    def submit(self) -> None:
        """Give each idle actor a queued shard, and chain that shard's commit task to its samples."""
        while self.idle and self.queue:
            task, actor = self.queue.popleft(), self.idle.pop()
            result = actor.compute.remote(task, self.attempts[task.shard_id])
            self.computing[result] = actor
            self.committing[self.commit.remote(result, self.config)] = task  # runs once the samples exist

    def wait(self) -> list:
        """Every reference ready now, waking on the first (an actor left idle between shards costs
        throughput); none after ``POLL_SECONDS``, so the progress bar keeps moving."""
        refs = [*self.computing, *self.probing, *self.committing]
        if not ray.wait(refs, num_returns=1, timeout=POLL_SECONDS, fetch_local=False)[0]:
            return []
        return ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)[0]

    def on_ready(self, ref) -> None:
        """Hand a ready reference to what it finished: a compute, a readiness probe or a commit."""
        if ref in self.computing:  # done or died: the actor gets its next shard once it answers
            self.probe(self.computing.pop(ref))
        elif ref in self.probing:
            self.on_probed(ref, self.probing.pop(ref))
        else:
            self.on_committed(ref, self.committing.pop(ref))

    def probe(self, actor) -> None:
        """Ask the actor whether it is up (Ray restarts one that died)."""
        self.probing[actor.ready.remote()] = actor

    def on_probed(self, ref, actor) -> None:
        """The actor is idle once it answers; probed again shortly while Ray restarts it. A start error, or
        ``MAX_FAILED_PROBES`` failures in a row, ends the run."""
        try:
            ray.get(ref)
        except RayError as err:
            self.failed_probes[actor] += 1
            if fatal := _fatal(err):
                raise fatal from None
            if self.failed_probes[actor] >= MAX_FAILED_PROBES:
                raise ConfigError(f"a Ray model worker did not come back after it died: {_reason(err)}") from None
            time.sleep(POLL_SECONDS)
            self.probe(actor)
            return
        self.idle.append(actor)
        self.failed_probes[actor] = 0

    def on_committed(self, ref, task: ShardTask) -> None:
        """Keep the shard's stats, or retry the shard (a fatal error ends the run)."""
        try:
            self.report.stats.append(ray.get(ref))
        except RayError as err:
            if fatal := _fatal(err):
                raise fatal from None
            self.retry(task, err)
            return
        self.finished.add(task.shard_id)
        self.committed_samples += task.end - task.start

    def retry(self, task: ShardTask, err: RayError) -> None:
        """Queue the shard again, or record it as failed once its retries are spent."""
        self.attempts[task.shard_id] += 1
        if self.attempts[task.shard_id] > self.retries:
            self.report.failed_shards[task.shard_id] = _reason(err)
        else:
            self.queue.append(task)

    def show_progress(self, on_samples: ProgressFn) -> None:
        """Report the change in samples done: committed shards, plus the current attempts' batches so far
        (a retried shard's earlier attempts no longer count)."""
        counts = ray.get(self.progress.snapshot.remote())
        in_flight = sum(k for (shard, attempt), k in counts.items()
                        if shard not in self.finished and attempt == self.attempts[shard])
        on_samples(self.committed_samples + in_flight - self.shown)
        self.shown = self.committed_samples + in_flight


class RayExecutor(Executor):
    def __init__(self, settings: ExecutorSettings):
        # a worker's torch threads are its CPUs, whatever OMP_NUM_THREADS the cluster's processes inherit
        super().__init__(settings.retries, torch_threads=max(1, int(settings.cpus_per_worker)))
        self.settings = settings

    def _pool_size(self) -> tuple[int, float]:
        """(actors, GPUs per actor) that fit this cluster beside one encoding task; ConfigError otherwise.

        Actors hold their CPUs and GPUs for the whole run, so a pool that leaves no room for an
        encoding task would wait forever; each actor and the encoding task must also fit one node."""
        s, total = self.settings, ray.cluster_resources()
        cpus, gpus_here = total.get("CPU", 0), total.get("GPU", 0)
        gpus = s.gpus_per_worker if s.gpus_per_worker is not None else (1.0 if gpus_here else 0.0)
        cluster = f"the Ray cluster has {cpus:g} CPUs and {gpus_here:g} GPUs"
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        if not (any(r.get("CPU", 0) >= s.cpus_per_worker and r.get("GPU", 0) >= gpus for r in nodes)
                and any(r.get("CPU", 0) >= s.encode_cpus for r in nodes)):
            raise ConfigError(f"{cluster}, but no node can host a worker with {s.cpus_per_worker:g} CPUs and "
                              f"{gpus:g} GPUs, or an encoding task with {s.encode_cpus:g} CPUs; lower "
                              "--gpus-per-worker/--cpus-per-worker/--encode-cpus")
        room = int((cpus - s.encode_cpus) // s.cpus_per_worker)
        if gpus:
            room = min(room, int(gpus_here // gpus))
        workers = s.workers or max(room, 1)
        if workers > room or workers < 1:
            raise ConfigError(f"{cluster}: {workers} workers with {s.cpus_per_worker:g} CPUs and {gpus:g} GPUs "
                              f"each (held for the whole run) and an encoding task with {s.encode_cpus:g} CPUs "
                              f"do not fit (at most {max(room, 0)} workers); lower --workers/--cpus-per-worker/"
                              "--gpus-per-worker/--encode-cpus")
        return workers, gpus

    def check(self) -> None:
        """Reach the cluster and check that the pool fits it (ConfigError otherwise)."""
        connect(self.settings.ray_address)
        self._pool_size()

    def run(self, tasks: list[ShardTask], config: RunConfig, on_samples: ProgressFn) -> ExecutionReport:
        if not tasks:
            return ExecutionReport()
        connect(self.settings.ray_address)
        n_workers, gpus = self._pool_size()
        n_workers = min(n_workers, len(tasks))
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        progress_name = f"datagen-progress-{uuid.uuid4().hex}"
        progress = ProgressCounter.options(name=progress_name).remote()
        actors = [ShardActor.options(num_cpus=self.settings.cpus_per_worker, num_gpus=gpus, max_restarts=-1,
                                     max_task_retries=0, runtime_env={"env_vars": env})
                  .remote(config, progress_name, self.torch_threads) for _ in range(n_workers)]
        commit = ray.remote(commit_shard).options(num_cpus=self.settings.encode_cpus, num_gpus=0, max_retries=0)
        try:
            return _Scheduler(tasks, actors, config, commit, progress, self.retries).run(on_samples)
        finally:
            for actor in (*actors, progress):
                ray.kill(actor)
