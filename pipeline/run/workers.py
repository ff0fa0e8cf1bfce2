"""Shard workers: turn a ShardTask into labelled samples, then into a written shard and its stats.

Two steps with different needs: ``ShardWorker.compute`` holds the models (``Runtime``) and runs
generation, feature capture and labelling of each batch in one process (the GPU step);
``commit_shard`` encodes images, masks and RLEs and writes the shard atomically (CPU only).
``ShardWorker.process`` does both in this process; the Ray executor runs them in different workers.
A sample that fails is recorded with its reason and never kills its shard; samples that raised are
retried by the next run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from pipeline.config import RunConfig
from pipeline.dataset.layout import Phase
from pipeline.dataset.plan import ERRORED, ShardTask
from pipeline.dataset.samples import LabelledSample, RawInstance, sample_key
from pipeline.dataset.shards import write_shard
from pipeline.dataset.tally import Tally
from pipeline.run import faults
from pipeline.runtime import Runtime
from stages.label import ClassMask, missing_classes
from stages.labelers import Labeler, Request, labeler_class, sample
from stages.prompts import PromptSpec, prompt_specs

ProgressFn = Callable[[int], None]


class SampleFailure(Exception):
    """A sample that cannot be written; ``reason`` is counted in the shard stats."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _raised(err: Exception) -> SampleFailure:
    return SampleFailure(f"{ERRORED}{type(err).__name__}: {err}"[:200])


@dataclass
class ShardResult:
    """A computed shard before encoding: its labelled samples and the samples that failed."""

    task: ShardTask
    samples: list[LabelledSample]
    failures: list[dict]  # {"key", "reason"}
    seconds: float


class ShardWorker:
    def __init__(self, config: RunConfig, runtime: Runtime | None = None):
        self.config = config
        self.runtime = runtime or Runtime(config)
        self.vocab = config.vocabulary()

    @cached_property
    def labeler(self) -> Labeler:
        """This worker's labeler (its config's ``labeler``) on the runtime's models, loaded on first use (after
        phase B, for one that labels with the trained checkpoint)."""
        return labeler_class(self.config.labeler).load(self.runtime)

    def specs(self, task: ShardTask) -> list[PromptSpec]:
        classes = self.vocab.seen if task.phase is Phase.ORACLE else self.vocab.classes
        return prompt_specs(self.vocab, classes, task.phase, self.config.seed, task.indices,
                            self.config.pair_fraction)

    def process(self, task: ShardTask, on_samples: ProgressFn | None = None) -> dict:
        """Compute, encode and write one shard here; its stats."""
        return commit_shard(self.compute(task, on_samples), self.config)

    def load_models(self, phase: Phase) -> None:
        """Load what a phase needs, once per worker, so that a shard's seconds are model work only."""
        rt = self.runtime
        rt.diffusion
        if phase is Phase.ORACLE:
            rt.oracle
        else:
            self.labeler

    def compute(self, task: ShardTask, on_samples: ProgressFn | None = None) -> ShardResult:
        """The model work of one shard, batch by batch; ``on_samples`` hears of each finished batch."""
        faults.shard_fault(task.shard_id)
        self.load_models(task.phase)
        started = time.time()
        specs = self.specs(task)
        samples, failures = [], []
        batch_size = self.config.preset.batch_size
        for i in range(0, len(specs), batch_size):
            batch = specs[i : i + batch_size]
            for spec, result in zip(batch, self._batch_isolating_failures(task.phase, batch)):
                if isinstance(result, SampleFailure):
                    failures.append({"key": sample_key(spec.index), "reason": result.reason})
                else:
                    samples.append(result)
            if on_samples:
                on_samples(len(batch))
            faults.kill_fault(task.shard_id, task.phase)
        return ShardResult(task, samples, failures, time.time() - started)

    def _label(self, phase: Phase, batch: list[PromptSpec]) -> list:
        for spec in batch:
            faults.sample_fault(spec.index)
        return self._oracle_batch(batch) if phase is Phase.ORACLE else self._label_batch(batch)

    def _batch_isolating_failures(self, phase: Phase, batch: list[PromptSpec]) -> list:
        """Samples of a batch; if the batch raises, each sample alone, so one bad sample fails alone."""
        if len(batch) > 1:
            try:
                return self._label(phase, batch)
            except Exception:  # noqa: BLE001 - isolate the failing sample below
                pass
        results = []
        for spec in batch:
            try:
                results += self._label(phase, [spec])
            except Exception as err:  # noqa: BLE001 - recorded in stats with its reason
                results.append(_raised(err))
        return results

    def _provenance(self, phase: Phase, timestep: int | None) -> dict:
        """What made a sample; ``timestep``: the capture step's, where the sample's labels read the features
        captured there; None for labels from a range of steps (kept in its ``labeler_settings``)."""
        captured = {} if timestep is None else {"capture_timestep": timestep}
        return {"phase": phase, "preset": self.config.preset_name, "run_seed": self.config.seed, **captured,
                "fingerprint": self.config.fingerprint()}

    def _filtered(self, finite: bool, masks: list[ClassMask], spec: PromptSpec) -> SampleFailure | None:
        """Why phase C does not write a labelled sample, or None to write it."""
        if not finite:
            return SampleFailure("nan_latents")
        if not masks:
            return SampleFailure("empty_mask")
        if missing_classes(masks, spec.classes, self.config.preset.min_mask_fraction):
            return SampleFailure("missing_mask")
        return None

    def _oracle_batch(self, batch: list[PromptSpec]) -> list:
        rt = self.runtime
        gen = rt.diffusion.generate(batch, capture_features=False, guidance=self.config.preset.guidance.oracle)
        detections = rt.oracle.label(gen.images, [list(s.classes) for s in batch])
        results = []
        for b, spec in enumerate(batch):
            found = {name: d for name, d in detections[b].items() if d is not None}
            if not gen.finite[b]:
                results.append(SampleFailure("nan_latents"))
            elif not found:
                results.append(SampleFailure("oracle_no_detection"))
            else:
                instances = [RawInstance(self.vocab[n].id, n, d.mask, d.score, d.box) for n, d in found.items()]
                results.append(LabelledSample(
                    spec, [self.vocab[n].id for n in spec.classes], gen.images[b], "oracle:maskrcnn",
                    instances, self._provenance(Phase.ORACLE, gen.timestep), latent=gen.latents[b].numpy()))
        return results

    def _label_batch(self, batch: list[PromptSpec]) -> list:
        """Phase C: one sampling pass, labelled by the run's labeler; filtered samples are failures."""
        labeler = self.labeler
        requests = [Request.of(spec, self.vocab) for spec in batch]
        sampled = sample(self.runtime.diffusion, [labeler], batch, [r.prompt_names for r in requests])
        gen, settings = sampled.generation, labeler.sample_settings()
        provenance = self._provenance(Phase.LABEL, gen.timestep if labeler.needs_features else None)
        results = []
        for b, (spec, labels) in enumerate(zip(batch, labeler.label(sampled, requests))):
            failure = self._filtered(gen.finite[b], labels.masks, spec)
            if failure:
                results.append(failure)
                continue
            image = gen.images[b]
            instances = [RawInstance(m.class_id, m.name, m.mask, m.score) for m in labels.masks]
            results.append(LabelledSample(spec, requests[b].class_ids, image, labeler.name, instances, provenance,
                                          seg=labels.segmentation(image.shape[:2]), labeler_settings=settings,
                                          labeler_stats=labels.stats or None))
        return results


def commit_shard(result: ShardResult, config: RunConfig) -> dict:
    """Encode a computed shard's samples and write the shard and its stats atomically; the stats."""
    samples, failures, tally = [], list(result.failures), Tally(masks=result.task.phase is Phase.LABEL)
    for labelled in result.samples:
        try:
            sample = labelled.encode(config.image_format)
        except Exception as err:  # noqa: BLE001 - recorded in stats with its reason
            failures.append({"key": sample_key(labelled.spec.index), "reason": _raised(err).reason})
            continue
        samples.append(sample)
        tally.add(json.loads(sample["json"])["instances"], labelled.image.shape[:2], labelled.seg)
    failures.sort(key=lambda f: f["key"])
    stats = _stats(result.task, len(samples), failures, tally, result.seconds, config.fingerprint())
    task = result.task
    return write_shard(task.folder, task.shard_id, faults.writer_fault(task.shard_id, task.phase, samples), stats)


def _stats(task: ShardTask, written: int, failures: list[dict], tally: Tally, seconds: float,
           fingerprint: str) -> dict:
    return {
        "phase": task.phase, "shard": task.shard_id, "start": task.start, "end": task.end,
        "planned": task.end - task.start, "written": written,
        "failed": dict(Counter(f["reason"] for f in failures)), "failures": failures, **tally.counts(),
        "seconds": round(seconds, 3), "fingerprint": fingerprint,
    }
