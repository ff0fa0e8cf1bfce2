"""Executors run shard tasks on workers. All executors give the same shards for the same tasks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from pipeline.config import ConfigError, RunConfig
from pipeline.dataset.plan import ShardTask
from pipeline.run.workers import ProgressFn


@dataclass
class ExecutionReport:
    stats: list[dict] = field(default_factory=list)
    failed_shards: dict[int, str] = field(default_factory=dict)  # shard id -> last error


class Executor(ABC):
    """Runs every task to a finished shard, retrying a failing shard up to ``retries`` times."""

    def __init__(self, retries: int = 2, torch_threads: int | None = None):
        self.retries = retries
        self.torch_threads = torch_threads  # its model workers' torch (CPU) threads; None: this process's

    def check(self) -> None:
        """Fail with one line, before anything is written, when this executor cannot run here."""

    @abstractmethod
    def run(self, tasks: list[ShardTask], config: RunConfig, on_samples: ProgressFn) -> ExecutionReport:
        ...


class ExecutorSettings(BaseModel):
    """Where and with which resources shards run; never changes the samples (not in the fingerprint)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: start a local Ray instance; "auto" or "ray://host:port": join one
    workers: int | None = Field(None, gt=0)  # model actors; None: one per GPU (gpus_per_worker), else per CPU
    gpus_per_worker: float | None = Field(None, ge=0)  # None: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = Field(1, gt=0)
    encode_cpus: float = Field(1, gt=0)  # CPUs of each shard-encoding-and-writing task (no GPU)
    retries: int = Field(2, ge=0)

    @field_validator("ray_address", "workers", "gpus_per_worker", "cpus_per_worker", "encode_cpus")
    @classmethod
    def _only_on_ray(cls, value, info: ValidationInfo):
        """A Ray flag given to the in-process executor is refused rather than silently ignored (the
        CPU flags only when they differ from their default of 1, which the CLI always passes)."""
        default = cls.model_fields[info.field_name].default
        if info.data.get("kind") == "local" and value is not None and value != default:
            raise PydanticCustomError("ray_only", "applies to Ray workers only; add --executor ray")
        return value


def make_executor(settings: ExecutorSettings, worker=None) -> Executor:
    """The executor ``settings`` ask for; ``worker`` is an in-process ShardWorker to reuse."""
    if settings.kind == "ray":
        try:
            from pipeline.run.executors.ray_executor import RayExecutor
        except ModuleNotFoundError as err:
            if err.name != "ray" and not (err.name or "").startswith("ray."):
                raise
            raise ConfigError("--executor ray needs Ray, which is not installed here: "
                              "pip install 'datagen[ray]'") from None

        return RayExecutor(settings)
    from pipeline.run.executors.local import LocalExecutor

    return LocalExecutor(retries=settings.retries, worker=worker)
