"""The measured costs behind `datagen run --dry-run`'s estimates, each with where it was measured.

A preset and device without a figure here get no time estimate (the plan says "not measured") rather
than a guess: the CPU figures of docs/performance.md are SD 1.5's architecture at 128 px and 8 steps, not
the sd15 preset's 512 px and 25, and no run has timed sd15's grounding training.
"""

from __future__ import annotations

# (preset, device kind) -> seconds per image of phase A (oracle) and phase C (label), per training step of
# phase B (None: not measured), the sampling steps they were measured at, and the source of the figures.
# GPU figures are wall seconds; CPU figures are one thread's CPU seconds, which are wall seconds on an idle
# core and robust to a shared machine.
SECONDS: dict[tuple[str, str], dict] = {
    ("sd15", "cuda"): {
        "oracle": 0.445, "label": 0.387, "train_step": None, "steps": 50,
        "source": "docs/performance.md, GPU: one H200, 512 px, 50 DDIM steps (scaled to the preset's steps), batch 16, "
                  "float16, eager; phase A is "
                  "its mode c, phase C its mode e (a run's writes overlap the next shard's compute)"},
    # tiny and the world: measured here (2026-12-05) as CPU seconds (user + sys, one thread, which an idle core
    # turns into as many wall seconds) of `datagen generate`, `train` and `label` with --n 32 --bootstrap-n 32
    # --train-steps 20 --device cpu, less a dry run's (imports and config: 5.4 s), over the samples or steps;
    # model loading is in. The 2 CPU cores were shared (load average 7 to 11), so wall times were 3-4x longer.
    ("tiny", "cpu"): {
        "oracle": 2.73, "label": 0.26, "train_step": 0.22, "steps": 10,  # phase A: the oracle keeps all 100 detections
        "source": "measured on a CPU, one thread, CPU seconds per image (pipeline/run/costs.py)"},
    ("world", "cpu"): {
        "oracle": 0.24, "label": 0.24, "train_step": 0.35, "steps": 20,
        "source": "measured on a CPU, one thread, CPU seconds per image (pipeline/run/costs.py)"},
}

# preset -> bytes of one oracle sample's latent.npy (float32 channels x (side / VAE factor)^2, and the .npy
# header): SD's VAE (4 channels, factor 8) at 512 px; tiny's and the world's, read off their oracle shards.
LATENT_BYTES = {"sd15": 4 * 64 * 64 * 4 + 128, "tiny": 4224, "world": 4224}
