"""What a world is made of: its architecture (fixed here) and its sizes (a model preset's ``world:``)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from testbed.random_presets import TINY_SD

# 32-pixel scenes and a VAE that downsamples 2x give a 16x16 latent (measured: a 4x VAE's 8x8 latent
# loses the forms, the oracle tells 66% of round trips apart against 82% through this one); the UNet
# attends to the prompt at 8x8 and 4x4 and in the middle block. The UNet is SD's design (text reaches
# it through cross-attention alone): measured, once the text encoder is pretrained on the captions
# (`pretrain_text_encoder`), adding a pooled prompt embedding to the timestep embedding (diffusers'
# `addition_embed_type: text`) changed nothing.
WORLD_ARCH = {
    "vae": {**TINY_SD["vae"], "block_out_channels": (16, 32), "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2},
    "unet": dict(
        in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64), norm_num_groups=16,
        cross_attention_dim=TINY_SD["text"]["hidden_size"], attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
    "text": TINY_SD["text"],
    "scheduler": dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1),
}


class Fit(BaseModel):
    """How one model is trained: AdamW steps, batch and peak learning rate (warm-up, cosine decay)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)


class WorldSpec(BaseModel):
    """A world's sizes; with the vocabulary it names the world's folder in the cache."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    vocab: str = "shapes"  # all of its classes are rendered and known to the UNet and the oracle
    image_size: int = Field(32, gt=0)
    scenes: int = Field(6000, gt=0)  # rendered training scenes (VAE, UNet, oracle)
    val_scenes: int = Field(300, gt=0)  # held-out scenes: the oracle's mask IoU
    pair_fraction: float = Field(0.5, ge=0, le=1)
    caption_dropout: float = Field(0.1, ge=0, lt=1)  # empty captions, so classifier-free guidance works
    # Min-SNR-gamma loss weights (Hang et al., ICCV 2023): min(SNR, gamma) / SNR per timestep, so the
    # nearly clean steps, where the image alone tells the form, stop dominating the gradient; None: plain
    min_snr_gamma: float | None = Field(5.0, gt=0)
    vae: Fit = Fit(steps=1500, batch_size=16, lr=2e-3)
    text: Fit = Fit(steps=300, batch_size=32, lr=1e-3)  # the text encoder learns which classes a caption names
    unet: Fit = Fit(steps=6000, batch_size=32, lr=1e-3)
    oracle: Fit = Fit(steps=4000, batch_size=8, lr=2e-3)
    samples_per_class: int = Field(16, gt=0)  # report: generated images per class (grid, oracle hit rate)
    sample_steps: int = Field(20, gt=0)
    sample_guidance: float = 4.0
    seed: int = 0


def world_name(spec: WorldSpec, vocabulary: dict) -> str:
    """The world's folder name in a cache: keyed by architecture, sizes and vocabulary (content)."""
    blob = json.dumps({"arch": WORLD_ARCH, "spec": spec.model_dump(mode="json"),
                       "classes": [c["name"] for c in vocabulary["classes"]],
                       "templates": [vocabulary["templates"], vocabulary["pair_templates"]]}, sort_keys=True)
    return f"world-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
