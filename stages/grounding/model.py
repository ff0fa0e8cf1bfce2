"""The grounding module of Grounded Diffusion (Li et al., ICCV 2023): class text + UNet features -> masks.

Visual encoder: per resolution a bias-free 1x1 conv reduces the captured UNet features (unconditional
and conditional halves concatenated on channels) to 16/32/64/128 channels from coarse to fine, then
coarse-to-fine fusion: bilinear upsampling of the running map, concatenation with the next
resolution's reduced map, a residual mixing block (pre-activation: BN, ReLU, 3x3 conv, twice). The
batch norm is plain (no affine, as the official code runs it) or, with ``conditional_bn``, conditional:
its gain and bias are linear functions of the class's text embedding, so each class gets its own
visual map. Text: SD's frozen CLIP text encoder on "a photograph of a {class}", mean of the
class-token hidden states, then a bias-free linear projection to the decoder width. Fusion: a
pre-norm transformer decoder (class query; memory = the visual map cut into patches, each patch
projected by a bias-free linear map), an MLP to a mask embedding, mask logits = mask embedding .
per-pixel visual map, bilinearly upsampled to the image size. Loss: per-class BCE with logits.

Departures from the paper and its public code (also listed in docs/paper.md):
- Features are grouped by their native resolution and each group is reduced there; the official code
  first resizes groups to 16/32/64/64 and mixes at 32/64/64. A bias-free 1x1 conv commutes with
  bilinear resizing, so the reductions are the same function; the mixing blocks run at 16/32/64.
- Mask logits are computed at the visual map's resolution and then upsampled; the official code
  upsamples the visual map to 512 first. Both steps are linear, so the logits are identical; this is
  64x cheaper.
- Each class query is decoded on its own (the K queries are folded into the batch axis). The official
  code segments one class per pass, so this is the same function for K > 1 at once.
- No spectral norm on the mixing convs (the official code wraps them in spectral norm).
- Sizes come from ``GroundingConfig`` (a preset sets its ``GroundingArchitecture`` part) so a tiny module
  runs in tests; the defaults are the paper's.
  The decoder's feed-forward width is 4 x width (2048 at the paper size) and dropout is 0, as in the
  official code; PyTorch's decoder layer keeps biases in its attention projections.
- Checkpoints are safetensors + config.json instead of pickled state dicts.
"""

from __future__ import annotations

import json
from itertools import accumulate
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator
from torch import Tensor, nn

from stages.vocab import fill_template, with_articles

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class GroundingArchitecture(BaseModel):
    """The grounding module's free sizes (a model preset's ``grounding:`` section); defaults are the
    paper's. ``reduce_channels`` pair with the feature resolutions from coarse to fine."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    reduce_channels: tuple[PositiveInt, ...] = Field(
        (16, 32, 64, 128), description="Channels of the bias-free 1x1 conv that reduces each feature resolution, "
        "from coarse to fine: one entry per UNet feature resolution (their sum is the visual map's channels, 240 "
        "at the paper's size).")
    width: PositiveInt = Field(512, description="Width of the transformer decoder (and of the class and mask "
                               "embeddings); divisible by heads.")
    heads: PositiveInt = Field(8, description="Attention heads of the transformer decoder.")
    layers: PositiveInt = Field(3, description="Layers of the transformer decoder.")
    patch_size: PositiveInt = Field(4, description="Side of the patches the visual map is cut into as the "
                                    "decoder's memory; divides the finest feature resolution.")
    conditional_bn: bool = Field(False, description="Batch norm gain and bias from the class embedding (the "
                                 "paper's reading; one visual map per class); false: plain, non-affine batch norm, "
                                 "as the official code runs it.")


class GroundingConfig(GroundingArchitecture):
    """Every size of a grounding module: the architecture plus what the models it reads fix."""

    feature_channels: dict[PositiveInt, PositiveInt]  # resolution -> input channels (uncond + cond concatenated)
    text_dim: PositiveInt  # CLIP hidden size (768 for SD 1.5)
    image_size: PositiveInt  # output mask size (512 for SD 1.5)

    @field_validator("feature_channels")
    @classmethod
    def _coarse_to_fine(cls, channels: dict[int, int]) -> dict[int, int]:
        if not channels:
            raise ValueError("GroundingConfig.feature_channels is empty: need at least one resolution")
        return dict(sorted(channels.items()))

    @model_validator(mode="after")
    def _consistent(self) -> "GroundingConfig":
        if len(self.reduce_channels) != len(self.feature_channels):
            raise ValueError(
                f"GroundingConfig.reduce_channels has {len(self.reduce_channels)} entries "
                f"{self.reduce_channels} but feature_channels has {len(self.feature_channels)} resolutions "
                f"{list(self.feature_channels)}: give one reduce width per resolution, coarse to fine")
        if self.width % self.heads:
            raise ValueError(f"GroundingConfig.width {self.width} is not divisible by heads {self.heads}")
        if self.finest % self.patch_size:
            raise ValueError(f"GroundingConfig.patch_size {self.patch_size} does not divide the finest "
                             f"resolution {self.finest}")
        return self

    @property
    def resolutions(self) -> list[int]:
        """Resolutions from coarse to fine."""
        return list(self.feature_channels)

    @property
    def finest(self) -> int:
        return max(self.feature_channels)

    @property
    def visual_channels(self) -> int:
        """Channels of the fused visual map (240 at the paper size)."""
        return sum(self.reduce_channels)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: dict) -> "GroundingConfig":
        return cls.model_validate(d)


class ClassTextEncoder:
    """Class-name embeddings from SD's frozen CLIP text encoder; cached per (template, name).

    Not a trainable part: the wrapped encoder is put in eval mode with ``requires_grad_(False)``.
    """

    def __init__(self, text_encoder, tokenizer):
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._cache: dict[tuple[str, str], Tensor] = {}

    def token_span(self, name: str, template: str = "a photograph of a {}") -> tuple[list[int], int, int]:
        """Token ids of the filled template (BOS ... EOS, unpadded) and the [start, end) of the name."""
        if template.count("{}") != 1:
            raise ValueError(f"text template {template!r} must contain exactly one '{{}}'")
        template = with_articles(template, [name])  # "a photograph of an umbrella"
        prefix = template.split("{}")[0]
        tok = self.tokenizer
        prefix_ids = tok(prefix, add_special_tokens=False).input_ids if prefix.strip() else []
        name_ids = tok(name, add_special_tokens=False).input_ids
        ids = tok(template.format(name)).input_ids
        start = 1 + len(prefix_ids)  # after BOS and the prefix
        end = start + len(name_ids)
        if not name_ids or ids[start:end] != name_ids:
            raise ValueError(f"class name {name!r} does not tokenize to the same tokens inside template "
                             f"{template!r}; cannot locate its token positions")
        if len(ids) > self.max_length:
            raise ValueError(f"class name {name!r} in template {template!r} is longer than the text "
                             f"encoder's {self.max_length} tokens")
        return ids, start, end

    @property
    def max_length(self) -> int:
        """Prompt length of the text encoder (77 for CLIP)."""
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device

    def encode(self, names: list[str], template: str = "a photograph of a {}") -> Tensor:
        """(K, hidden) float32: mean last hidden state over each name's tokens in the template."""
        missing = list(dict.fromkeys(n for n in names if (template, n) not in self._cache))
        if missing:
            spans = [self.token_span(n, template) for n in missing]
            batch = self.tokenizer([fill_template(template, [n]) for n in missing], padding="max_length",
                                   max_length=self.max_length, truncation=True,
                                   return_tensors="pt")  # padded like SD's prompts
            with torch.no_grad():
                hidden = self.text_encoder(batch.input_ids.to(self.device)).last_hidden_state
            for i, (name, (_, start, end)) in enumerate(zip(missing, spans)):
                self._cache[(template, name)] = hidden[i, start:end].float().mean(0).clone()
        if not names:
            return torch.zeros(0, self.text_encoder.config.hidden_size, device=self.device)
        return torch.stack([self._cache[(template, n)] for n in names])


def class_embeddings(text: ClassTextEncoder, names: list[list[str]], template: str,
                     device) -> tuple[Tensor, Tensor]:
    """(B, K, D) embeddings of each sample's class names, padded to the batch's largest K, and
    the (B, K) mask of real (unpadded) entries."""
    k = max(len(n) for n in names)
    rows, valid = [], torch.zeros(len(names), k, dtype=torch.bool)
    for i, sample_names in enumerate(names):
        padded = list(sample_names) + [sample_names[0]] * (k - len(sample_names))
        rows.append(text.encode(padded, template))
        valid[i, : len(sample_names)] = True
    return torch.stack(rows).to(device), valid.to(device)


class ConditionalBatchNorm(nn.Module):
    """Batch norm without its own affine; with ``cond_dim``, gain and bias come from a condition vector."""

    def __init__(self, channels: int, cond_dim: int | None):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels) if cond_dim else None
        self.bias = nn.Linear(cond_dim, channels) if cond_dim else None
        for layer in (self.gain, self.bias):
            if layer is not None:  # starts as plain batch norm
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, condition: Tensor | None) -> Tensor:
        x = self.norm(x)
        if self.gain is None:
            return x
        return x * (1 + self.gain(condition)[:, :, None, None]) + self.bias(condition)[:, :, None, None]


class MixBlock(nn.Module):
    """Pre-activation residual block: (BN, ReLU, 3x3 conv) twice, added to the input."""

    def __init__(self, channels: int, cond_dim: int | None):
        super().__init__()
        self.norm1 = ConditionalBatchNorm(channels, cond_dim)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = ConditionalBatchNorm(channels, cond_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor, condition: Tensor | None = None) -> Tensor:
        h = self.conv1(F.relu(self.norm1(x, condition)))
        h = self.conv2(F.relu(self.norm2(h, condition)))
        return x + h


class GroundingModule(nn.Module):
    """Mask logits (B, K, image_size, image_size) for K class embeddings given captured UNet features."""

    def __init__(self, config: GroundingConfig):
        super().__init__()
        self.config = config
        c = config
        self.reduce = nn.ModuleDict({str(r): nn.Conv2d(c.feature_channels[r], out, 1, bias=False)
                                     for r, out in zip(c.resolutions, c.reduce_channels)})
        cond_dim = c.text_dim if c.conditional_bn else None
        running = list(accumulate(c.reduce_channels))  # channels of the running map
        self.mix = nn.ModuleList(MixBlock(running[i], cond_dim) for i in range(1, len(running)))
        cv = c.visual_channels
        self.patchify = nn.Conv2d(cv, c.width, c.patch_size, stride=c.patch_size, bias=False)
        self.text_proj = nn.Linear(c.text_dim, c.width, bias=False)
        layer = nn.TransformerDecoderLayer(c.width, c.heads, dim_feedforward=4 * c.width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, c.layers)
        self.mask_mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.ReLU(inplace=True),
                                      nn.Linear(c.width, c.width), nn.ReLU(inplace=True),
                                      nn.Linear(c.width, cv))

    def visual_map(self, features: dict[int, Tensor], condition: Tensor | None = None) -> Tensor:
        """(B, sum(reduce_channels), finest, finest): the fused per-pixel visual map.

        ``condition`` (B, text_dim) is required with conditional batch norm and ignored without.
        """
        c = self.config
        got = sorted(int(r) for r in features)
        if got != c.resolutions:
            raise ValueError(f"features have resolutions {got}, the grounding module expects {c.resolutions}")
        if c.conditional_bn and condition is None:
            raise ValueError("this grounding module uses conditional batch norm: pass a condition")
        dtype = self.patchify.weight.dtype
        x = None
        for i, r in enumerate(c.resolutions):
            f = features[r]
            if f.shape[1] != c.feature_channels[r] or tuple(f.shape[-2:]) != (r, r):
                raise ValueError(f"features at resolution {r} have shape {tuple(f.shape)}, expected "
                                 f"(B, {c.feature_channels[r]}, {r}, {r})")
            reduced = self.reduce[str(r)](f.to(dtype))
            if x is None:
                x = reduced
            else:
                x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
                x = self.mix[i - 1](torch.cat([x, reduced], dim=1), condition)
        return x

    def forward(self, features: dict[int, Tensor], class_embeddings: Tensor) -> Tensor:
        b = next(iter(features.values())).shape[0]
        if class_embeddings.dim() == 2:
            class_embeddings = class_embeddings.unsqueeze(0).expand(b, -1, -1)
        if class_embeddings.dim() != 3 or class_embeddings.shape[0] != b \
                or class_embeddings.shape[2] != self.config.text_dim:
            raise ValueError(f"class_embeddings have shape {tuple(class_embeddings.shape)}, expected "
                             f"(K, {self.config.text_dim}) or ({b}, K, {self.config.text_dim})")
        k = class_embeddings.shape[1]
        text = class_embeddings.reshape(b * k, -1).to(self.patchify.weight.dtype)
        if self.config.conditional_bn:  # one visual map per (sample, class)
            visual = self.visual_map({r: f.repeat_interleave(k, 0) for r, f in features.items()}, text)
            memory = self.patchify(visual).flatten(2).transpose(1, 2)
            visual = visual.reshape(b, k, *visual.shape[1:])
            pattern = "bkc,bkchw->bkhw"
        else:  # one visual map per sample, shared by its classes
            visual = self.visual_map(features)
            memory = self.patchify(visual).flatten(2).transpose(1, 2).repeat_interleave(k, 0)
            pattern = "bkc,bchw->bkhw"
        # One query per decoder sequence: classes are decoded independently (see module docstring).
        decoded = self.decoder(self.text_proj(text).unsqueeze(1), memory)[:, 0]  # (B*K, width)
        mask_embed = self.mask_mlp(decoded).reshape(b, k, -1)  # (B, K, C)
        logits = torch.einsum(pattern, mask_embed, visual)  # (B, K, h, w)
        size = self.config.image_size
        return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def grounding_loss(logits: Tensor, targets: Tensor, valid: Tensor, ignore: Tensor | None = None) -> Tensor:
    """Per-class BCE with logits, averaged over the pixels of the valid (B, K) entries, leaving out
    pixels marked in ``ignore`` (B, H, W) when given; 0 (with grad) if nothing is valid."""
    valid = valid.to(device=logits.device, dtype=torch.bool)
    weight = valid[:, :, None, None].expand_as(logits).float()
    if ignore is not None:
        weight = weight * (~ignore.to(logits.device, torch.bool))[:, None].float()
    if not weight.any():
        return logits.sum() * 0.0
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), targets.to(logits.device, torch.float32),
                                                   reduction="none")
    return (per_pixel * weight).sum() / weight.sum()


def save_grounding(module: GroundingModule, path_dir) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``path_dir`` (created if needed). Written through
    Python's file I/O, so a full disk is an ``OSError`` (safetensors' own writer raises its own error type)."""
    from safetensors.torch import save

    folder = Path(path_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    (folder / WEIGHTS_FILE).write_bytes(save(state))
    (folder / CONFIG_FILE).write_text(json.dumps(module.config.to_dict(), indent=2, sort_keys=True))


def load_grounding(path_dir, map_location="cpu") -> GroundingModule:
    """Rebuild a module saved by ``save_grounding``; ValueError naming the file when it is missing or
    does not match."""
    from safetensors.torch import load_file

    folder = Path(path_dir)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"grounding checkpoint file {path} is missing")
    try:
        config = GroundingConfig.from_dict(json.loads(config_path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"grounding config {config_path} is invalid: {e}") from e
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise ValueError(f"grounding weights {weights_path} cannot be read: {e}") from e
    module = GroundingModule(config)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"grounding weights {weights_path} do not match {config_path}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {shapes[:5]}")
    module.load_state_dict(state)
    return module.to(map_location)
