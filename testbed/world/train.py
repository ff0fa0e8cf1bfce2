"""Training loops of the world's models: the text encoder's pretraining, the latent diffusion UNet and the
Mask R-CNN oracle (the VAE is fitted by ``testbed.toy_vae.fit_autoencoder``), and the oracle's mask IoU on
held-out scenes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from stages.grounding.metrics import IoU
from stages.oracle import Oracle
from testbed.toy_vae import warmup_cosine
from testbed.world.spec import Fit

OnStep = Callable[[float], None]
EMA_DECAY = 0.995  # the saved UNet is an exponential average of the last few hundred steps' weights
MIN_INSTANCE_PIXELS = 4  # a shape occluded down to fewer pixels is no training instance


def _fit(params, fit: Fit, batch_loss: Callable[[], torch.Tensor], on_step: OnStep | None,
         after_step: Callable[[], None] | None = None) -> list[float]:
    """``fit.steps`` AdamW steps on ``batch_loss()`` (a fresh batch each call), the rate warmed up over the
    first 5% of steps, then cosine-decayed to zero; ``after_step()`` after each update. The losses."""
    optimizer = torch.optim.AdamW(params, lr=fit.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(fit.steps))
    losses = []
    for _ in range(fit.steps):
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if after_step:
            after_step()
        losses.append(loss.item())
        if on_step:
            on_step(losses[-1])
    return losses


def pretrain_text_encoder(text_encoder, token_ids: torch.Tensor, named: torch.Tensor, eos_token_id: int, fit: Fit,
                          seed: int, on_step: OnStep | None = None) -> list[float]:
    """Teach the random CLIP text encoder which classes a caption names, then freeze it, as SD's CLIP
    arrives pretrained: from the end-of-text token on (where causal attention has seen the whole
    caption) every position predicts the caption's classes (``named``: (N, K) 0/1, for ``token_ids``
    (N, L)) through a linear probe that is then dropped. Text only: no image is seen. Measured, a
    frozen random encoder gives two one-class prompts states of cosine 0.9-0.99 at every position,
    and a UNet trained on them ignored the prompt. Returns the losses."""
    generator = torch.Generator().manual_seed(seed)
    text_encoder.train().requires_grad_(True)
    probe = torch.nn.Linear(text_encoder.config.hidden_size, named.shape[1])
    after_eos = (token_ids == eos_token_id).cumsum(1) > 0

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(len(token_ids), (fit.batch_size,), generator=generator)
        logits = probe(text_encoder(token_ids[idx])[0])
        per_position = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, named[idx, None].expand_as(logits), reduction="none").mean(-1)
        return per_position[after_eos[idx]].mean()
    losses = _fit([*text_encoder.parameters(), *probe.parameters()], fit, batch_loss, on_step)
    text_encoder.eval().requires_grad_(False)
    return losses


def train_unet(unet, latents: torch.Tensor, captions: torch.Tensor, embeddings: torch.Tensor, fit: Fit,
               caption_dropout: float, scheduler_config: dict, seed: int, on_step: OnStep | None = None,
               min_snr_gamma: float | None = None):
    """Train ``unet`` to predict the noise of noised ``latents`` (N, 4, h, w) given their caption
    embeddings (``embeddings[captions]``; row 0 is the empty caption, used with ``caption_dropout``),
    each timestep's loss weighted by min(SNR, ``min_snr_gamma``) / SNR where a gamma is given.
    Returns (the EMA of its weights, a UNet, for saving; the losses)."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=scheduler_config["beta_start"],
                                    beta_end=scheduler_config["beta_end"],
                                    beta_schedule=scheduler_config["beta_schedule"])
    snr = noise_scheduler.alphas_cumprod / (1 - noise_scheduler.alphas_cumprod)
    weights = snr.clamp(max=min_snr_gamma) / snr if min_snr_gamma else torch.ones_like(snr)
    generator = torch.Generator().manual_seed(seed)
    unet.train().requires_grad_(True)
    ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True)

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(len(latents), (fit.batch_size,), generator=generator)
        caption = torch.where(torch.rand(fit.batch_size, generator=generator) < caption_dropout, 0, captions[idx])
        clean = latents[idx]
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (fit.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(clean, noise, t)
        predicted = unet(noisy, t, encoder_hidden_states=embeddings[caption]).sample
        return (weights[t] * ((predicted - noise) ** 2).mean((1, 2, 3))).mean()
    losses = _fit(unet.parameters(), fit, batch_loss, on_step, after_step=lambda: ema.update_parameters(unet))
    return ema.module.eval().requires_grad_(False), losses


@torch.no_grad()
def text_gap(unet, latents: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor, scheduler_config: dict,
             seed: int, buckets: int = 5) -> dict[str, float]:
    """How much the UNet uses the prompt, per timestep bucket: its noise-prediction loss on held-out
    ``latents`` with ``wrong`` caption embeddings (another scene's) over that with the ``right`` ones,
    minus 1, in percent. Near 0 at every t: the UNet ignores the text (whatever a judge of its images
    says); the form is decided at high noise, where a gap measured only at low t would miss it."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=scheduler_config["beta_start"],
                                    beta_end=scheduler_config["beta_end"],
                                    beta_schedule=scheduler_config["beta_schedule"])
    generator = torch.Generator().manual_seed(seed)
    width = noise_scheduler.config.num_train_timesteps // buckets
    gaps = {}
    for low in range(0, buckets * width, width):
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(low, low + width, (len(latents),), generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        loss = [float(torch.nn.functional.mse_loss(unet(noisy, t, encoder_hidden_states=e).sample, noise))
                for e in (right, wrong)]
        gaps[f"{low}-{low + width}"] = round(100 * (loss[1] / loss[0] - 1), 2)
    return gaps


def instance_targets(mask: np.ndarray) -> dict[str, torch.Tensor]:
    """torchvision detection targets of one scene: one instance per class value in ``mask`` (a scene
    holds distinct classes), label = the value, box = the extent of its visible pixels."""
    boxes, labels, masks = [], [], []
    for value in np.unique(mask[mask > 0]):
        binary = mask == value
        if binary.sum() < MIN_INSTANCE_PIXELS:
            continue
        ys, xs = np.nonzero(binary)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(int(value))
        masks.append(binary)
    h, w = mask.shape
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), bool)).to(torch.uint8)}


def train_oracle(model, images: np.ndarray, masks: np.ndarray, fit: Fit, seed: int,
                 on_step: OnStep | None = None) -> list[float]:
    """Train a torchvision Mask R-CNN in place on scenes (uint8 (N, H, W, 3) images, (N, H, W) masks of
    category ids); returns the summed losses per step."""
    generator = torch.Generator().manual_seed(seed)
    targets = [instance_targets(m) for m in masks]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    model.train()

    def batch_loss() -> torch.Tensor:
        idx = torch.randint(len(images), (fit.batch_size,), generator=generator).tolist()
        return sum(model([pixels[i].float() / 255 for i in idx], [targets[i] for i in idx]).values())
    losses = _fit([p for p in model.parameters() if p.requires_grad], fit, batch_loss, on_step)
    model.eval()
    return losses


def oracle_quality(oracle: Oracle, images: np.ndarray, masks: np.ndarray, names: list[str],
                   batch_size: int = 32) -> dict:
    """The oracle on scenes with exact masks, as phase A uses it (each image asked for the classes in
    it): per class the IoU of its top detection with the true mask (summed over images; a missed
    class counts its pixels as missed) and the fraction of instances found."""
    iou, found, present = IoU(), {n: 0 for n in names}, {n: 0 for n in names}
    for start in range(0, len(images), batch_size):
        chunk = masks[start:start + batch_size]
        asked = [[names[v - 1] for v in np.unique(m[m > 0])] for m in chunk]
        for mask, wanted, result in zip(chunk, asked, oracle.label(images[start:start + batch_size], asked)):
            for name in wanted:
                truth = mask == names.index(name) + 1
                detection = result[name]
                present[name] += 1
                found[name] += detection is not None
                iou.add(name, detection.mask if detection is not None else np.zeros_like(truth), truth)
    per_class = iou.per_class()
    return {"miou": iou.mean(), "per_class_iou": per_class,
            "found": {n: found[n] / present[n] for n in names if present[n]}}


def top_detection_rate(oracle: Oracle, images: np.ndarray, truth: list[str], batch_size: int = 32) -> float:
    """The fraction of ``images`` whose highest-scoring detection (any class, any score) is the class
    ``truth[i]``: the strict test that a one-shape image shows its class (a 0.05-threshold "find" is not)."""
    hits = 0
    for start in range(0, len(images), batch_size):
        for found, name in zip(oracle.candidates(images[start:start + batch_size]), truth[start:start + batch_size]):
            hits += len(found.scores) > 0 and int(found.labels[found.scores.argmax()]) == oracle.label_ids[name]
    return hits / len(images)
