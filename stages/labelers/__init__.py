"""Phase C's labelers, chosen by name (``datagen run --labeler NAME``); each implements ``base.Labeler``."""

from __future__ import annotations

from stages.errors import DatagenError
from stages.labelers.attention import AttentionLabeler
from stages.labelers.base import Labeler, LabelerModels, Request, Sampled, invert, sample
from stages.labelers.consensus import ConsensusLabeler
from stages.labelers.grounding import GroundingLabeler

__all__ = ["LABELERS", "Labeler", "LabelerModels", "Request", "Sampled", "invert", "labeler_class", "sample"]

LABELERS: dict[str, type[Labeler]] = {labeler.name: labeler for labeler in (
    GroundingLabeler,
    AttentionLabeler,
    ConsensusLabeler,
)}


class UnknownLabelerError(DatagenError, ValueError):
    """A labeler name that is not registered; one line for the user."""


def labeler_class(name: str) -> type[Labeler]:
    if name not in LABELERS:
        raise UnknownLabelerError(f"unknown labeler '{name}': not one of {', '.join(LABELERS)}")
    return LABELERS[name]
