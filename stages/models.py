"""Model loading: Stable Diffusion from a hub id or folder, made fast for the device.

A model folder (a real one, or one built by ``testbed``) keeps its Mask R-CNN oracle beside the diffusers
files, in ``MASKRCNN_FILE``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stages.weights import WeightsMissingError, downloads_allowed

MASKRCNN_FILE = "maskrcnn.safetensors"



def load_stable_diffusion(source: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load a ``StableDiffusionPipeline`` from a local folder or a hub id (cache first).

    Raises WeightsMissingError (one line: what is missing and how to point at a local copy) instead
    of a long traceback or a download that cannot happen.
    """
    local = Path(source).expanduser()
    if not local.exists() and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise WeightsMissingError(f"Stable Diffusion folder {local} does not exist "
                                  "(and it is not a hub id of the form owner/name)")
    if local.exists() and not (local / "model_index.json").exists():
        raise WeightsMissingError(f"{local} is not a diffusers Stable Diffusion folder (no model_index.json)")
    try:
        pipe = _from_pretrained(str(local) if local.exists() else source, dtype)
    except (OSError, ValueError) as err:
        if local.exists() or not downloads_allowed() or not _download(source):
            raise WeightsMissingError(
                f"Stable Diffusion weights '{source}' are not available here ({type(err).__name__}); "
                f"download them elsewhere (e.g. `hf download {source}`) and pass --sd-path DIR, "
                "or set HF_HOME to a cache that holds them") from err
        try:
            pipe = _from_pretrained(source, dtype)
        except (OSError, ValueError) as err:
            raise WeightsMissingError(f"Stable Diffusion weights '{source}' were downloaded but cannot be loaded "
                                      f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    return pipe.to(device)


def fast_path(pipe, device: str, compile_unet: bool = False):
    """The pipeline made fast for ``device``: on CUDA the UNet and VAE in channels-last memory format
    (the layout cuDNN's tensor-core convolutions read, saving a transpose per convolution); with
    ``compile_unet``, the UNet compiled in place by torch.compile (its first calls compile; hooks
    and attributes stay on the same module). Attention already runs PyTorch's fused
    scaled_dot_product_attention: diffusers' default processor (``AttnProcessor2_0``)."""
    if device.startswith("cuda"):
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile_unet:
        pipe.unet.compile()
    return pipe


def _from_pretrained(path: str, dtype: torch.dtype):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _download(repo_id: str) -> bool:
    """Fetch the diffusers files of a hub repo into the HF cache; False when that is impossible."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, etag_timeout=10, allow_patterns=[  # the fp32 diffusers folders only
            "model_index.json", "*/config.json", "*/*_config.json", "tokenizer/*.txt", "tokenizer/*.json",
            "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors"])
        return True
    except Exception:  # noqa: BLE001 - no network, no repo, no permission: all mean unavailable
        return False
