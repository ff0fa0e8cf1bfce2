"""Build a world into a folder: render scenes, fit the VAE, train the UNet and the oracle, save them in
the formats a real run loads (diffusers ``save_pretrained``; the oracle's safetensors file with its
categories), and write the report (losses, times, the oracle's mask IoU, sample grids per class)."""

from __future__ import annotations

import json
import multiprocessing
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stages.generate import Diffusion
from stages.models import MASKRCNN_FILE, load_stable_diffusion
from stages.oracle import Oracle, TorchvisionOracle, build_small_maskrcnn, load_maskrcnn, save_detector
from stages.prompts import PromptSpec
from stages.vocab import Vocabulary, VocabularyError
from testbed.random_presets import clip_tokenizer
from testbed.toy_shapes import FORMS, draw_scene
from testbed.toy_vae import fit_autoencoder
from testbed.world.spec import WORLD_ARCH, WorldSpec
from testbed.world.train import (
    oracle_quality,
    pretrain_text_encoder,
    text_gap,
    top_detection_rate,
    train_oracle,
    train_unet,
)

REPORT = "report.json"
SAMPLES_DIR = "samples"
REPORT_SCORE_THRESHOLD = 0.05  # the oracle's score threshold in the report, the official code's (and the preset's)
Progress = Callable[[str, int, int], None]  # (part, steps done, steps in all)


def render_scenes(vocab: Vocabulary, n: int, size: int, pair_fraction: float, seed: int):
    """``n`` colour-free scenes of all the vocabulary's classes: uint8 images (n, H, W, 3), masks
    (n, H, W) of class ids, and one caption per scene from the vocabulary's templates."""
    names = [c.name for c in vocab.classes]
    if unknown := [n for n in names if n not in FORMS]:
        raise VocabularyError(f"vocabulary {vocab.name}: the world renders only {sorted(FORMS)}, not {unknown}")
    rng = np.random.default_rng(seed)
    images, masks, captions = [], [], []
    for _ in range(n):
        pair = len(names) > 1 and rng.random() < pair_fraction
        image, mask, drawn = draw_scene(rng, size, names, pair)
        order = [vocab[d].prompt_name for d in rng.permutation(drawn)]
        templates = vocab.pair_templates if pair else vocab.templates
        images.append(image)
        masks.append(mask)
        captions.append(templates[int(rng.integers(len(templates)))].format(*order))
    return np.stack(images), np.stack(masks), captions


def _pipeline(seed: int, image_size: int):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    latent = image_size // 2 ** (len(WORLD_ARCH["vae"]["block_out_channels"]) - 1)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**WORLD_ARCH["vae"]), text_encoder=CLIPTextModel(CLIPTextConfig(**WORLD_ARCH["text"])),
        tokenizer=clip_tokenizer(), unet=UNet2DConditionModel(**WORLD_ARCH["unet"], sample_size=latent),
        scheduler=DDIMScheduler(**WORLD_ARCH["scheduler"]), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


@torch.no_grad()  # not inference_mode: the UNet's training graph takes these as inputs
def _embed(pipe, texts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids)[0]


class _Clock:
    """Wall and CPU seconds of each part of the build."""

    def __init__(self):
        self.parts: dict[str, dict[str, float]] = {}

    def __call__(self, part: str):
        clock = self

        class _Part:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def __exit__(self, *_):
                clock.parts[part] = {"wall_s": round(time.perf_counter() - self.wall, 1),
                                     "cpu_s": round(time.process_time() - self.cpu, 1)}
        return _Part()


def build_world(folder: Path, spec: WorldSpec, vocab: Vocabulary, progress: Progress | None = None) -> dict:
    """Write the world (diffusers folder + ``maskrcnn.safetensors`` + report) into ``folder``; the report."""
    folder = Path(folder)
    names = [c.name for c in vocab.classes]
    categories = ("__background__", *(c.detector_name for c in vocab.classes))
    clock, report = _Clock(), {"spec": spec.model_dump(mode="json"), "classes": names}

    oracle_done = multiprocessing.get_context("spawn").Value("i", 0)

    def step(part: str, total: int):
        done = [0]

        def on_step(_loss: float) -> None:
            done[0] += 1
            if progress:
                progress(part, done[0], total)
                progress("oracle", oracle_done.value, spec.oracle.steps)
        return on_step

    with clock("render"):
        images, masks, captions = render_scenes(vocab, spec.scenes, spec.image_size, spec.pair_fraction, spec.seed)
        val_images, val_masks, val_captions = render_scenes(vocab, spec.val_scenes, spec.image_size, spec.pair_fraction,
                                                 spec.seed + 1)
        single_images, single_masks, _ = render_scenes(vocab, spec.val_scenes, spec.image_size, 0.0, spec.seed + 2)
    pipe = _pipeline(spec.seed, spec.image_size)
    with clock("vae"):
        latents, vae_losses = _fit_vae(pipe, images, spec, step("vae", spec.vae.steps))
        round_trips = _decode(pipe, latents)
    vae_mse = float(np.mean((round_trips[:256].astype(np.float32) - images[:256]) ** 2) / 127.5 ** 2)
    threads = torch.get_num_threads()
    oracle_threads = max(1, threads // 2)
    # the oracle trains in a second process meanwhile, on the rendered scenes and their round trips
    # through the VAE (the generated images it labels are decoded by that VAE): the two loops share no
    # data and each keeps one core busy, where one process's intra-op threads gain little on these
    # small tensors. Leaving the block terminates that process, so a failure here does not wait for it.
    with multiprocessing.get_context("spawn").Pool(1, _share_counter, (oracle_done,)) as pool:
        oracle_job = pool.apply_async(_train_oracle_job, (categories, np.concatenate([images, round_trips]),
                                                          np.concatenate([masks, masks]), spec, oracle_threads,
                                                          folder / MASKRCNN_FILE))
        torch.set_num_threads(max(1, threads - oracle_threads))
        try:
            losses = _train_generator(pipe, folder, spec, clock, latents, captions,
                                      [c.prompt_name for c in vocab.classes], step)
        finally:
            torch.set_num_threads(threads)
        while not oracle_job.ready():  # the generator is done: the oracle's bar keeps moving meanwhile
            oracle_job.wait(1.0)
            if progress:
                progress("oracle", oracle_done.value, spec.oracle.steps)
        losses["oracle"], clock.parts["oracle"] = oracle_job.get()
    losses = {"vae": vae_losses, **losses}
    with clock("report"):
        loaded = load_maskrcnn(spec.image_size, folder / MASKRCNN_FILE, box_score_thresh=0.05)
        oracle = TorchvisionOracle(loaded, vocab, score_threshold=REPORT_SCORE_THRESHOLD, categories=categories)
        report["oracle_on_rendered"] = oracle_quality(oracle, val_images, val_masks, names)
        truth = [names[int(m.max()) - 1] for m in single_masks]
        report["oracle_top_is_true_class"] = {
            "rendered": top_detection_rate(oracle, single_images, truth),
            "round_trip": top_detection_rate(oracle, _decode(pipe, _encode(pipe, single_images)), truth)}
        report["generated"] = _sample_grids(folder, vocab, spec, oracle)
        right = _embed(pipe, val_captions)
        wrong = right[_other_scenes(val_masks, spec.seed)]
        report["unet_text_gap_percent"] = text_gap(pipe.unet, _encode(pipe, val_images), right, wrong,
                                                   WORLD_ARCH["scheduler"], spec.seed)
    report["losses"] = {part: _curve(values) for part, values in losses.items()}
    report["vae_reconstruction_mse"] = vae_mse
    report["times"] = clock.parts
    report["threads"] = {"generator": max(1, threads - oracle_threads), "oracle": oracle_threads}
    (folder / REPORT).write_text(json.dumps(report, indent=1))
    return report


def _fit_vae(pipe, images: np.ndarray, spec: WorldSpec, on_step) -> tuple[torch.Tensor, list[float]]:
    """Fit the VAE to the rendered scenes; (their scaled latents, the losses)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    losses = fit_autoencoder(pipe.vae, pixels, spec.vae.steps, spec.vae.batch_size, spec.vae.lr, seed=spec.seed,
                             on_step=on_step, anneal=True)
    return _encode(pipe, images), losses


@torch.no_grad()
def _encode(pipe, images: np.ndarray) -> torch.Tensor:
    """uint8 scenes (N, H, W, 3) -> scaled VAE latents (posterior means), as the UNet is trained on."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.cat([pipe.vae.encode(pixels[i:i + 256]).latent_dist.mean
                      for i in range(0, len(pixels), 256)]) * pipe.vae.config.scaling_factor


@torch.no_grad()
def _decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents -> uint8 images (N, H, W, 3), as generation decodes."""
    out = torch.cat([pipe.vae.decode(latents[i:i + 256] / pipe.vae.config.scaling_factor).sample
                     for i in range(0, len(latents), 256)])
    return ((out / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _train_generator(pipe, folder: Path, spec: WorldSpec, clock: _Clock, latents: torch.Tensor, captions: list[str],
                     prompt_names: list[str], step) -> dict[str, list[float]]:
    """Pretrain the text encoder on the captions, train the UNet on the VAE's latents and save the
    diffusers folder; the losses of each."""
    texts = ["", *sorted(set(captions))]
    with clock("text"):
        ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        named = torch.tensor([[float(re.search(rf"\b{re.escape(n)}\b", t) is not None) for n in prompt_names]
                              for t in texts])
        text_losses = pretrain_text_encoder(pipe.text_encoder, ids, named, pipe.tokenizer.eos_token_id, spec.text,
                                            spec.seed, step("text", spec.text.steps))
    with clock("unet"):
        embeddings = _embed(pipe, texts)
        index = {t: i for i, t in enumerate(texts)}
        unet, unet_losses = train_unet(pipe.unet, latents, torch.tensor([index[c] for c in captions]), embeddings,
                                       spec.unet, spec.caption_dropout, WORLD_ARCH["scheduler"], spec.seed,
                                       step("unet", spec.unet.steps), spec.min_snr_gamma)
    pipe.unet = unet
    pipe.register_modules(unet=unet)
    pipe.save_pretrained(folder)
    return {"text": text_losses, "unet": unet_losses}


_oracle_done = None  # the step counter the parent polls, in the oracle's process


def _share_counter(counter) -> None:
    global _oracle_done
    _oracle_done = counter


def _train_oracle_job(categories: tuple[str, ...], images: np.ndarray, masks: np.ndarray, spec: WorldSpec,
                      threads: int, path: Path) -> tuple[list[float], dict]:
    """In the oracle's process: train the small Mask R-CNN and save it; (its losses, wall and CPU seconds)."""
    torch.set_num_threads(threads)
    wall, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(spec.seed)
    detector = build_small_maskrcnn(categories, spec.image_size)

    def on_step(_loss: float) -> None:
        with _oracle_done.get_lock():
            _oracle_done.value += 1
    losses = train_oracle(detector, images, masks, spec.oracle, spec.seed, on_step)
    save_detector(detector, path, categories)
    return losses, {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1)}


def _other_scenes(masks: np.ndarray, seed: int) -> list[int]:
    """For each scene, another scene drawn at random whose classes differ: its caption is a wrong one."""
    rng = np.random.default_rng(seed)
    shown = [frozenset(np.unique(m[m > 0]).tolist()) for m in masks]
    return [int(rng.choice([j for j, other in enumerate(shown) if other != classes])) for classes in shown]


def _curve(losses: list[float], points: int = 20) -> dict:
    """First/last losses (mean of 5% of steps each) and a short curve of means over equal spans."""
    k = max(1, len(losses) // 20)
    spans = np.array_split(np.array(losses), min(points, len(losses)))
    return {"first": float(np.mean(losses[:k])), "last": float(np.mean(losses[-k:])),
            "curve": [round(float(s.mean()), 4) for s in spans]}


def _sample_grids(folder: Path, vocab: Vocabulary, spec: WorldSpec, oracle: Oracle) -> dict:
    """Generate ``samples_per_class`` images per class through the saved (reloaded) pipeline, as phase
    A does; save a grid per class (images over the oracle's mask of the prompted class) and return the
    fraction where the oracle finds the prompted class."""
    pipe = load_stable_diffusion(str(folder))
    diffusion = Diffusion(pipe, steps=spec.sample_steps, guidance=spec.sample_guidance, capture_step=1)
    (folder / SAMPLES_DIR).mkdir()
    found, top = {}, {}
    for c in vocab.classes:
        specs = [PromptSpec(i, vocab.templates[0].format(c.prompt_name), (c.name,), spec.seed * 1000 + i)
                 for i in range(spec.samples_per_class)]
        images = diffusion.generate(specs, capture_features=False).images
        detections = [r[c.name] for r in oracle.label(images, [[c.name]] * len(images))]
        found[c.name] = sum(d is not None for d in detections) / len(detections)
        top[c.name] = top_detection_rate(oracle, images, [c.name] * len(images))
        overlays = [np.where(d.mask[..., None], (0.5 * im + [0, 127, 0]).astype(np.uint8), im // 3)
                    if d is not None else im // 3 for im, d in zip(images, detections)]
        grid = np.concatenate([np.concatenate(list(images), 1), np.concatenate(overlays, 1)], 0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(
            folder / SAMPLES_DIR / f"{c.name}.png")
    seen = [found[c.name] for c in vocab.seen]
    # at a 0.05 threshold the oracle "finds" most classes somewhere; its top detection being the
    # prompted class is the stricter test that the generator follows the prompt
    return {"oracle_finds_prompted_class": found, "mean": float(np.mean(list(found.values()))),
            "oracle_top_is_prompted_class": top, "mean_top": float(np.mean(list(top.values()))),
            "mean_seen": float(np.mean(seen)) if seen else None,
            "steps": spec.sample_steps, "guidance": spec.sample_guidance}
