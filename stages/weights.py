"""Pretrained weights: the one error a user sees when they are missing, and when downloads may run."""

from __future__ import annotations

import os

from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

from stages.errors import DatagenError


class WeightsMissingError(DatagenError, RuntimeError):
    """Weights that are neither on this machine nor downloadable; the message is one line for the user."""


def downloads_allowed() -> bool:
    """False when HF_HUB_OFFLINE or DATAGEN_OFFLINE is true (1, yes, on, ...): caches and folders only."""
    return not any(os.environ.get(var, "").upper() in ENV_VARS_TRUE_VALUES
                   for var in ("HF_HUB_OFFLINE", "DATAGEN_OFFLINE"))
