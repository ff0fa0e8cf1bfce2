"""The tiny preset's models and SD 1.5's architecture, with random weights built from a seed.

The tiny preset has the real architecture families, the real CLIP BPE vocabulary and random seeded
weights. It is saved with ``save_pretrained`` and loaded back through the same ``from_pretrained``
path a real run uses, so tests exercise the production loading code. The same builder writes SD 1.5's
exact architecture with random weights, for throughput measurements.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import torch

from stages.models import MASKRCNN_FILE

# Architecture of the tiny preset: small enough for CPU tests, same component classes as SD 1.5.
TINY_SD = {
    "unet": dict(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=16, cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
        norm_num_groups=16, sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    ),
    "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=49408, max_position_embeddings=77, projection_dim=32),
}
# Stable Diffusion v1.5's architecture (the unet, vae and text_encoder config.json of
# stable-diffusion-v1-5, written out; defaults left out): random weights in it compute exactly as fast
# as the real model, so throughput is measured without the weights (benchmarks/throughput.py).
SD15_SD = {
    "unet": dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), norm_num_groups=32, cross_attention_dim=768,
        attention_head_dim=8, act_fn="silu", downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "vae": dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ),
    "text": dict(  # CLIP ViT-L/14's text tower
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        vocab_size=49408, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    ),
}
ARCHITECTURES = {"tiny": TINY_SD, "sd15": SD15_SD}


def clip_tokenizer():
    """The real CLIP BPE tokenizer (49408 tokens), built from the vocabulary in open_clip's wheel."""
    import open_clip
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe, "rt", encoding="utf-8").read().split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab)},
                         merges=[tuple(m.split()) for m in merges], model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable unicode table, in CLIP's vocabulary order."""
    order = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in order}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(order))
    return table


def random_preset_name(seed: int, image_size: int, arch: str = "tiny") -> str:
    """A random-weight preset's folder name in a cache: keyed by its architecture, seed and image size
    (``arch``: a name in ARCHITECTURES; the tiny preset's keys are unchanged since before there were two)."""
    spec = {"arch": ARCHITECTURES[arch], "seed": seed, "image_size": image_size}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return f"{arch}-random-{digest}" if arch != "tiny" else f"tiny-{digest}"


def build_random_preset(folder: Path, seed: int, image_size: int, arch: str = "tiny") -> None:
    """Write a random-weight preset (diffusers folder + COCO-sized Mask R-CNN weights) of architecture
    ``arch`` (``tiny``, or ``sd15`` for SD 1.5's) into the empty ``folder``; the UNet's sample size is
    set from ``image_size``, since it fixes the resolution that is sampled."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from stages.oracle import build_maskrcnn

    torch.manual_seed(seed)
    spec = ARCHITECTURES[arch]
    vae = AutoencoderKL(**spec["vae"])
    latent = image_size // 2 ** (len(spec["vae"]["block_out_channels"]) - 1)
    unet = UNet2DConditionModel(**{**spec["unet"], "sample_size": latent})
    text = CLIPTextModel(CLIPTextConfig(**spec["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    detector = build_maskrcnn(image_size)
    # Random class logits favour a few categories; shrinking them spreads the random detections over
    # all 91, so the oracle's per-class matching has something to match for every class.
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.weight.mul_(0.01)
        detector.roi_heads.box_predictor.cls_score.bias.zero_()
    save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, Path(folder) / MASKRCNN_FILE)
