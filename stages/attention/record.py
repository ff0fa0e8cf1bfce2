"""Recording a UNet's attention probabilities while it samples, through diffusers' attention processors.

Only the recorded layers get a ``RecordingProcessor`` (``unet.set_attn_processor`` with a dict keyed by
processor name); every other layer keeps the processor it had, diffusers' ``AttnProcessor2_0`` (PyTorch's
fused ``scaled_dot_product_attention``). A recording processor computes its layer's output with that same
fused processor, so the images do not change; besides, it computes the attention probabilities of the
conditional half of the guided batch ([unconditional; conditional], as ``Diffusion`` runs it), averaged
over heads. Each sample's probabilities come from its own queries and keys only, whatever its batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from stages.errors import DatagenError

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention


class AttentionRecordingError(DatagenError, ValueError):
    """Attention settings that do not fit the UNet (no such layer), or a prompt without its class tokens."""


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # the processor's name in ``unet.attn_processors``
    part: str  # down, mid or up
    resolution: int  # side of the latent grid the layer attends over
    cross: bool  # cross-attention (queries: pixels, keys: prompt tokens) or self-attention
    level: int  # downsamplings between the latent and the layer: it works at 1/2**level of the latent's side


def _block_resolutions(unet) -> dict[str, tuple[int, int]]:
    """(side, level) at each down block, the mid block and each up block of a ``UNet2DConditionModel``: the
    latent grid's side there and how many times the UNet halved the latent before it."""
    size = unet.config.sample_size
    if not isinstance(size, int):
        height, width = size
        if height != width:
            raise AttentionRecordingError(f"the attention labeler needs a square latent, not {height}x{width}")
        size = height
    sides, level = {}, 0
    for i, block in enumerate(unet.down_blocks):
        sides[f"down_blocks.{i}"] = size, level
        if block.downsamplers:
            size, level = (size + 1) // 2, level + 1  # stride-2 convolution with padding 1
    sides["mid_block"] = size, level
    for i, block in enumerate(unet.up_blocks):
        sides[f"up_blocks.{i}"] = size, level
        if block.upsamplers:
            size, level = size * 2, level - 1
    return sides


def attention_layers(unet) -> list[AttentionLayer]:
    """Every attention layer of a ``UNet2DConditionModel``, with its part, resolution and level."""
    from diffusers.models.attention_processor import Attention  # here: the labeler registry loads without diffusers

    sides = _block_resolutions(unet)
    layers = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        parts = name.split(".")
        block = "mid_block" if parts[0] == "mid_block" else ".".join(parts[:2])
        side, level = sides[block]
        layers.append(AttentionLayer(f"{name}.processor", {"down_blocks": "down", "mid_block": "mid",
                                                           "up_blocks": "up"}[parts[0]],
                                     side, bool(module.is_cross_attention), level))
    return layers


def conditional_probabilities(attn: Attention, hidden_states: torch.Tensor,
                              context: torch.Tensor | None) -> torch.Tensor:
    """(B, queries, keys): softmax(q k^T * scale) of the conditional half ([B:]) of a guided batch of 2B,
    averaged over heads. ``context`` is the prompt embeddings (cross-attention) or None (self-attention)."""
    if any(getattr(attn, norm, None) is not None for norm in ("group_norm", "spatial_norm", "norm_cross", "norm_q",
                                                                "norm_k")):
        raise AttentionRecordingError("this attention layer normalises its inputs, which the recorder does not "
                                      "reproduce: record Stable Diffusion's transformer attention layers only")
    half = hidden_states.shape[0] // 2
    x = hidden_states[half:]
    keys_from = x if context is None else context[half:]
    query = attn.head_to_batch_dim(attn.to_q(x))
    key = attn.head_to_batch_dim(attn.to_k(keys_from))
    probs = attn.get_attention_scores(query, key)  # (B * heads, queries, keys), batch-major
    return probs.unflatten(0, (half, attn.heads)).float().mean(1)


class RecordingProcessor:
    """An attention processor that hands its layer's conditional probabilities to a recorder, then
    computes the layer's output with diffusers' fused ``AttnProcessor2_0``."""

    def __init__(self, recorder: AttentionRecorder, layer: AttentionLayer):
        from diffusers.models.attention_processor import AttnProcessor2_0  # as in attention_layers

        self.recorder, self.layer = recorder, layer
        self.fused = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        if self.recorder.recording:
            if attention_mask is not None or hidden_states.ndim != 3:
                raise AttentionRecordingError("recording attention needs unmasked attention over token sequences")
            probs = conditional_probabilities(attn, hidden_states,
                                              encoder_hidden_states if self.layer.cross else None)
            self.recorder.add(self.layer, probs)
        return self.fused(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


@dataclass
class RecordedAttention:
    """What a recorder kept for a batch of B samples, averaged over its layers and steps."""

    cross: torch.Tensor  # (B, tokens, R, R): cross-attention of every token, at one resolution R
    affinity: torch.Tensor | None  # (B, r*r, r*r): self-attention (rows: query pixels), when recorded
    calls: int  # recorded (layer, step) cross-attention maps averaged into ``cross``


class AttentionRecorder:
    """While entered, records the probabilities of ``layers`` at the UNet calls whose timestep is in
    ``timesteps`` (a UNet call per sampling step); the other layers' processors are left as they are."""

    def __init__(self, unet, layers: list[AttentionLayer], timesteps: set[int]):
        self.unet, self.layers, self.timesteps = unet, list(layers), set(timesteps)
        self.recording = False
        self._sums: dict[tuple[bool, int], torch.Tensor] = {}
        self._counts: dict[tuple[bool, int], int] = {}
        self._saved: dict | None = None
        self._hook = None

    def __enter__(self) -> AttentionRecorder:
        self._saved = dict(self.unet.attn_processors)
        processors = dict(self._saved)
        for layer in self.layers:
            processors[layer.name] = RecordingProcessor(self, layer)
        self.unet.set_attn_processor(processors)
        self._hook = self.unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True)
        self._sums, self._counts = {}, {}
        return self

    def __exit__(self, *_exc) -> None:
        self._hook.remove()
        self.unet.set_attn_processor(dict(self._saved))
        self.recording = False

    def _on_unet_call(self, _module, args, kwargs):
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        self.recording = int(torch.as_tensor(timestep).flatten()[0]) in self.timesteps

    def add(self, layer: AttentionLayer, probs: torch.Tensor) -> None:
        if probs.shape[1] != layer.resolution ** 2:
            raise AttentionRecordingError(f"{layer.name} attended over {probs.shape[1]} positions, not "
                                          f"{layer.resolution}x{layer.resolution}")
        key = (layer.cross, layer.resolution)
        self._sums[key] = self._sums[key] + probs if key in self._sums else probs.clone()
        self._counts[key] = self._counts.get(key, 0) + 1

    def take(self, resolution: int) -> RecordedAttention:
        """The recorded cross-attention, each (layer, step) map resized to ``resolution`` (bilinear) and
        averaged with equal weight, and the mean self-attention at ``resolution`` if it was recorded."""
        cross = [(res, total) for (is_cross, res), total in self._sums.items() if is_cross]
        if not cross:
            raise AttentionRecordingError("no cross-attention was recorded: no UNet call at a recorded timestep")
        resized = []
        for res, total in cross:
            grid = total.transpose(1, 2).unflatten(2, (res, res))  # (B, tokens, res, res)
            resized.append(grid if res == resolution else
                           F.interpolate(grid, size=(resolution, resolution), mode="bilinear", align_corners=False))
        calls = sum(self._counts[(True, res)] for res, _ in cross)
        key = (False, resolution)
        affinity = self._sums[key] / self._counts[key] if key in self._sums else None
        return RecordedAttention(torch.stack(resized).sum(0) / calls, affinity, calls)
