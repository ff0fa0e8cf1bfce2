"""Recorded attention -> one normalised map per prompted class -> disjoint class masks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stages.attention.record import AttentionRecordingError
from stages.label import SampleLabels, masks_from_probabilities


def class_token_positions(tokenizer, prompt: str, names: list[str]) -> list[list[int]]:
    """Per class name, its token positions in the tokenized ``prompt`` (BOS at 0), as the text encoder
    sees it. Names are found in prompt order, each after the previous one, so a name that is part of
    another ("plant" in "potted plant") takes its own occurrence; a multi-token name has several."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    positions, start = [], 1
    for name in names:
        name_ids = tokenizer(name, add_special_tokens=False).input_ids
        at = next((i for i in range(start, len(ids) - len(name_ids) + 1) if ids[i:i + len(name_ids)] == name_ids),
                  None)
        if not name_ids or at is None:
            raise AttentionRecordingError(f"the tokens of class {name!r} are not in the "
                                          f"({tokenizer.model_max_length}-token) prompt {prompt!r}")
        positions.append(list(range(at, at + len(name_ids))))
        start = at + len(name_ids)
    return positions


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each (H, W) map of (K, H, W) min-max scaled to [0, 1]; a constant map becomes 0."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def class_maps(cross: torch.Tensor, positions: list[list[int]], size: int,
               affinity: torch.Tensor | None = None, power: int = 1) -> torch.Tensor:
    """(K, size, size) in [0, 1]: per class, the mean over its tokens of ``cross`` (tokens, R, R);
    with ``affinity`` (R*R, R*R, rows summing to 1), propagated as ``affinity**power @ map``; then
    bilinearly upsampled to ``size`` and normalised."""
    maps = torch.stack([cross[p].mean(0) for p in positions]).float()
    if affinity is not None:
        side = maps.shape[-1]
        spread = torch.linalg.matrix_power(affinity.float(), power)
        maps = (spread @ maps.flatten(1).T).T.unflatten(1, (side, side))
    maps = F.interpolate(maps[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return normalise(maps)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's (1979) threshold of values in [0, 1]: the histogram cut that maximises the between-class
    variance; pixels above it are foreground."""
    hist = torch.histc(values.float().flatten().cpu(), bins=bins, min=0.0, max=1.0).double()
    p = hist / hist.sum()
    centers = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    weight = p.cumsum(0)[:-1]  # background share for a cut after bin k
    mean = (p * centers).cumsum(0)[:-1]
    total = (p * centers).sum()
    between = (total * weight - mean) ** 2 / (weight * (1 - weight))
    between = torch.nan_to_num(between, nan=-1.0, posinf=-1.0)  # an empty side is no cut
    return float((between.argmax() + 1) / bins)


def attention_masks(maps: torch.Tensor, class_ids: list[int], names: list[str], threshold: float | str,
                    uncertain: float | None = None) -> SampleLabels:
    """Disjoint masks from (K, H, W) normalised maps: a class's pixels are above its threshold (a number,
    or ``otsu``: one per class and image) and above every other class's map. With ``uncertain``, the
    unassigned pixels whose best class scores at least that much are marked uncertain."""
    thresholds = [otsu_threshold(m) for m in maps] if threshold == "otsu" else float(threshold)
    masks = masks_from_probabilities(maps, class_ids, names, thresholds)
    unsure = np.zeros(maps.shape[1:], dtype=bool)
    if uncertain is not None:
        assigned = np.logical_or.reduce([m.mask for m in masks]) if masks else unsure
        unsure = (maps.max(0).values >= uncertain).cpu().numpy() & ~assigned
    return SampleLabels(masks, unsure)
