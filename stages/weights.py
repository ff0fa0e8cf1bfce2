"""Pretrained weights: the one error a user sees when they are missing, and when downloads may run."""

from __future__ import annotations

import os


class WeightsMissingError(RuntimeError):
    """Weights that are neither on this machine nor downloadable; the message is one line for the user."""


def downloads_allowed() -> bool:
    """False when HF_HUB_OFFLINE or DATAGEN_OFFLINE is set: weights then come from caches and folders only."""
    return not any(os.environ.get(var, "0") not in ("", "0") for var in ("HF_HUB_OFFLINE", "DATAGEN_OFFLINE"))
