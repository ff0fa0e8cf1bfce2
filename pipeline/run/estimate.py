"""`datagen run --dry-run`: what a run would make and what it would cost, from its config alone. No model
is loaded and nothing is written: the counts come from the config, the prompts from ``stages.prompts``,
the disk from the image size (``pipeline.dataset.sizing``) and the time from ``pipeline.run.costs``."""

from __future__ import annotations

import math

from pipeline.config import RunConfig
from pipeline.dataset.layout import Phase
from pipeline.dataset.sizing import bytes_per_sample
from pipeline.run.api import phases_for
from pipeline.run.costs import LATENT_BYTES, SECONDS
from pipeline.runtime import resolve_device
from stages.prompts import prompt_specs

PREVIEW = 3  # prompts shown per phase


def plan(config: RunConfig, phases: frozenset[Phase]) -> dict:
    """Per phase the run would run: samples (or steps), shards, prompt preview, bytes and seconds on this
    device (None where no figure was measured), the totals, and the total on the preset's other measured
    devices (``elsewhere``: a CPU machine planning a GPU run sees its time too)."""
    device = resolve_device(config.device)
    kind = device.partition(":")[0]
    rows = _phases(config, phases, SECONDS.get((config.preset_name, kind), {}))
    elsewhere = {other: {**_total(_phases(config, phases, figures)), "source": figures["source"]}
                 for (preset, other), figures in SECONDS.items() if preset == config.preset_name and other != kind}
    return {"out": str(config.out), "preset": config.preset_name, "vocab": config.vocab, "device": device,
            "labeler": config.labeler, "phases": rows, "bytes": sum(row["bytes"] for row in rows.values()),
            **_total(rows), "time_source": SECONDS.get((config.preset_name, kind), {}).get(
                "source", f"not measured for preset {config.preset_name} on {kind}"), "elsewhere": elsewhere}


def _phases(config: RunConfig, phases: frozenset[Phase], figures: dict) -> dict:
    preset, vocab, rows = config.preset, config.vocabulary(), {}
    sample_bytes = bytes_per_sample(preset.image_size, config.image_format)
    latent = LATENT_BYTES.get(config.preset_name) or 4 * (preset.image_size // 8) ** 2 * 4 + 128  # SD's VAE
    for phase in sorted(phases_for(config, phases), key=lambda p: p.letter):
        if phase is Phase.TRAIN:
            rows[phase.value] = {"steps": preset.train.steps, "bytes": 0,
                                   "seconds": _times(figures.get("train_step"), preset.train.steps)}
            continue
        oracle = phase is Phase.ORACLE
        n = preset.bootstrap_n if oracle else config.n
        classes = vocab.seen if oracle else vocab.classes
        rows[phase.value] = {
            "samples": n, "shards": math.ceil(n / preset.shard_size),
            "prompts": [s.prompt for s in prompt_specs(vocab, classes, phase, config.seed, range(min(PREVIEW, n)),
                                                       config.pair_fraction)],
            "bytes": n * (sample_bytes + (latent if oracle else 0)),
            "seconds": _times(_per_image(figures, "oracle" if oracle else "label", preset.steps), n)}
    return rows


def _total(rows: dict) -> dict:
    """``seconds``: the measured phases' seconds summed (None if none is measured); ``not_measured``: the
    phases left out of it."""
    measured = [row["seconds"] for row in rows.values() if row["seconds"] is not None]
    return {"seconds": round(sum(measured), 1) if measured else None,
            "not_measured": [name for name, row in rows.items() if row["seconds"] is None]}


def _per_image(figures: dict, phase: str, steps: int) -> float | None:
    """A phase's measured seconds per image, scaled to ``steps`` sampling steps from the steps it was measured
    at: the UNet's calls are most of a phase's time (on the GPU, bare diffusers is 0.353 of phase C's 0.387
    s/image), so fewer steps cost about proportionally less."""
    seconds = figures.get(phase)
    return None if seconds is None else seconds * steps / figures["steps"]


def _times(per_item: float | None, count: int) -> float | None:
    return None if per_item is None else round(per_item * count, 1)
