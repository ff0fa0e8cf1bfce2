"""Grounding training as a user runs it: annotated images (VOC layout), schedule, resume after a kill,
validation mIoU, learning on the toy shapes, and Protocol I."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.layout import RESUME_DIR
from pipeline.dataset.voc import voc_images
from pipeline.runtime import Runtime
from pipeline.training.annotated import load_annotated
from pipeline.training.job import train_on_annotated
from stages.errors import DataError
from stages.generate import Diffusion
from stages.grounding.metrics import BACKGROUND, IoU, add_predictions
from stages.grounding.train import GroundingTrainer, TrainOptions, autocast_dtype
from stages.prompts import prompt_for
from testbed.toy_shapes import write_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=48, n_val=16, seed=0)


def toy_config(toy, out, cache_dir, **train) -> RunConfig:
    settings = {"steps": 6, "batch_size": 4, "lr": 1e-3, **train}
    return RunConfig(vocab=str(toy / "vocab.yaml"), out=out, preset_name="tiny", device="cpu", n=1,
                     preset=load_preset("tiny", {"train": settings}), cache_dir=cache_dir)


def test_schedule_warms_up_then_decays():
    options = TrainOptions(steps=10, lr=1.0, warmup_steps=2, schedule="cosine")
    factors = [options.lr_factor(s) for s in range(10)]
    assert factors[:2] == [0.5, 1.0] and factors[2] == 1.0
    assert all(a > b for a, b in zip(factors[2:], factors[3:])) and factors[-1] < 0.05
    assert TrainOptions(steps=10, lr=1.0).lr_factor(7) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        TrainOptions(steps=1, lr=1.0, schedule="step")


def test_autocast_only_where_it_pays():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        autocast_dtype("fp16", cpu)


def test_voc_folder_is_read_with_classes_prompts_and_ignore(toy, voc):
    from pipeline.config import resolve_vocabulary

    vocab = resolve_vocabulary(str(toy / "vocab.yaml"))
    items = voc_images(toy, "train")
    assert len(items) == 48 and items[0].image.name == "toy_000000.jpg"
    sample = load_annotated(items[0], vocab, 32)  # resized
    seg = np.array(Image.open(items[0].mask))
    names = [vocab.classes[i - 1].name for i in sorted(set(np.unique(seg)) - {0})]
    assert sample["names"] == names and sample["targets"].shape == (len(names), 32, 32)
    assert sample["prompt"] == prompt_for(vocab, names) and names[0] in sample["prompt"]
    assert prompt_for(voc, ["dog", "cat"]) == "a photograph of a dog and a cat"
    assert prompt_for(voc, ["dog", "cat", "cow"]) == "a photograph of a dog and a cat and a cow"

    seg[:4] = 255  # "not scored" border, as VOC marks object outlines
    Image.fromarray(seg).save(toy / "SegmentationClass" / "edited.png")
    Image.open(items[0].image).save(toy / "JPEGImages" / "edited.jpg")
    (toy / "ImageSets" / "Segmentation" / "edited.txt").write_text("edited\n")
    edited = load_annotated(voc_images(toy, "edited")[0], vocab, 64)
    assert edited["ignore"][:4].all() and not edited["ignore"][4:].any() and not edited["targets"][:, :4].any()

    with pytest.raises(DataError, match="test.txt is missing"):
        voc_images(toy, "test")
    (toy / "ImageSets" / "Segmentation" / "broken.txt").write_text("nope\n")
    with pytest.raises(DataError, match="nope.jpg is missing"):
        voc_images(toy, "broken")
    Image.fromarray(np.full(seg.shape, 7, np.uint8)).save(toy / "SegmentationClass" / "edited.png")  # its image's size
    with pytest.raises(DataError, match="class index 7 but the vocabulary 'toy-shapes' has 5"):
        load_annotated(voc_images(toy, "edited")[0], vocab, 64)


def test_real_images_are_encoded_and_noised_to_the_capture_step(tiny_pipe):
    diffusion = Diffusion(tiny_pipe, steps=10, guidance=7.5, capture_step=3)
    t = diffusion.capture_timestep
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    noised = diffusion.latents_from_images(images, t, [1, 2])
    assert noised.shape == (2, 4, 16, 16)
    torch.testing.assert_close(noised[1:], diffusion.latents_from_images(images[1:], t, [2]))  # per sample
    vae = tiny_pipe.vae
    with torch.no_grad():
        clean = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    alpha = tiny_pipe.scheduler.alphas_cumprod[t]
    noise = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(noised[0], alpha.sqrt() * clean[0] + (1 - alpha).sqrt() * noise, atol=1e-5, rtol=1e-4)


def test_iou_of_perfect_and_background_predictions():
    targets = torch.zeros(1, 2, 8, 8)
    targets[0, 0, :4] = 1
    targets[0, 1, 6:] = 1
    batch = {"names": [["circle", "square"]], "targets": targets, "has_target": torch.tensor([[True, False]])}
    perfect = IoU()
    add_predictions(perfect, targets, batch)
    assert perfect.per_class() == {BACKGROUND: 0.5, "circle": 1.0}  # square: no target, so its pixels
    background = IoU()                                             # count against background only
    add_predictions(background, torch.zeros_like(targets), batch)
    assert background.per_class() == {BACKGROUND: 0.5, "circle": 0.0} and background.mean() == 0.25
    assert background.mean(["circle", "dog"]) == 0.0 and IoU().mean() is None


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "grounding" / "model.safetensors"))


def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_identical(toy, tmp_path, cache_dir, monkeypatch):
    settings = {"checkpoint_every": 2, "accumulate": 2, "warmup_steps": 2, "schedule": "cosine", "validate_every": 3}
    straight = toy_config(toy, tmp_path / "straight", cache_dir, **settings)
    record = train_on_annotated(straight, Runtime(straight), toy, "train", "val")
    assert record["steps"] == 6 and record["resumed_at"] == 0 and len(record["losses"]) == 6
    assert [v["step"] for v in record["validation"]] == [3, 6] and record["validation"][-1]["miou"] > 0
    assert not (tmp_path / "straight" / RESUME_DIR).exists()

    killed = toy_config(toy, tmp_path / "killed", cache_dir, **settings)
    original = GroundingTrainer.train_step

    def dies_at_step_5(self, batches):
        if self.step == 4:
            raise KeyboardInterrupt
        return original(self, batches)

    monkeypatch.setattr(GroundingTrainer, "train_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_on_annotated(killed, Runtime(killed), toy, "train", "val")
    progress = json.loads((tmp_path / "killed" / RESUME_DIR / "progress.json").read_text())
    assert progress["step"] == 4 and not (tmp_path / "killed" / "grounding").exists()
    monkeypatch.setattr(GroundingTrainer, "train_step", original)

    resumed = train_on_annotated(killed, Runtime(killed), toy, "train", "val")
    assert resumed["resumed_at"] == 4 and resumed["losses"] == pytest.approx(record["losses"], rel=1e-5)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)

    other = toy_config(toy, tmp_path / "killed", cache_dir, **{**settings, "steps": 1})  # another job
    (tmp_path / "killed" / RESUME_DIR).mkdir()
    (tmp_path / "killed" / RESUME_DIR / "progress.json").write_text(json.dumps(progress))
    assert train_on_annotated(other, Runtime(other), toy, "train", "val")["resumed_at"] == 0


def test_annotated_training_learns_the_toy_shapes(toy, tmp_path, cache_dir):
    """Fast version of `make bench-grounding`: loss falls and held-out mIoU beats all-background."""
    config = toy_config(toy, tmp_path, cache_dir, steps=60, batch_size=8, warmup_steps=5)
    record = train_on_annotated(config, Runtime(config), toy, "train", "val")
    assert np.mean(record["losses"][-5:]) < 0.6 * np.mean(record["losses"][:5]), record["losses"]
    background = IoU()
    for item in voc_images(toy, "val"):
        seg = np.array(Image.open(item.mask))
        background.add(BACKGROUND, np.ones(seg.shape, bool), seg == 0)
        for i in set(np.unique(seg)) - {0}:
            background.add(str(i), np.zeros(seg.shape, bool), seg == i)
    final = record["validation"][-1]
    assert final["miou"] > background.mean() + 0.05, (final, background.per_class())
