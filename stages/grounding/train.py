"""The grounding module's training loop: features recomputed from stored latents, per-class BCE."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from stages.generate import Diffusion
from stages.grounding.model import ClassTextEncoder, GroundingModule, grounding_loss


def class_embeddings(text: ClassTextEncoder, names: list[list[str]], template: str,
                     device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, D) embeddings of each sample's class names, padded to the batch's largest K, and
    the (B, K) mask of real (unpadded) entries."""
    k = max(len(n) for n in names)
    rows, valid = [], torch.zeros(len(names), k, dtype=torch.bool)
    for i, sample_names in enumerate(names):
        padded = list(sample_names) + [sample_names[0]] * (k - len(sample_names))
        rows.append(text.encode(padded, template))
        valid[i, : len(sample_names)] = True
    return torch.stack(rows).to(device), valid.to(device)


def train_grounding(module: GroundingModule, text: ClassTextEncoder, diffusion: Diffusion,
                    batches: Iterator[dict], steps: int, lr: float, template: str,
                    on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Adam on per-class BCE for ``steps`` batches; returns the loss of each step.

    A batch holds ``latents`` (B, 4, h, w), ``timestep``, ``prompts``, ``names`` (per-sample class
    text names), ``targets`` (B, K, H, W) float and ``has_target`` (B, K) bool: a class that the
    oracle did not find gets no loss.
    """
    device = diffusion.device
    module.to(device).train()
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        batch = next(batches)
        features = diffusion.features_from_latent(batch["latents"], batch["timestep"], batch["prompts"])
        features = {r: f.float().clone() for r, f in features.items()}  # leave inference mode
        embeddings, valid = class_embeddings(text, batch["names"], template, device)
        logits = module(features, embeddings)
        loss = grounding_loss(logits, batch["targets"].to(device), valid & batch["has_target"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
    module.eval()
    return losses
