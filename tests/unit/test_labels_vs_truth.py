"""Labels against the truth on the tiny preset: the inversion path records what sampling records, through the
same capture and recorder, at the same timestep; a labeler that paints whatever it is asked for scores
the absent class as present, one that ignores it scores 0."""

import numpy as np
import pytest
import torch

from pipeline.config import RunConfig, load_preset, resolve_vocabulary
from pipeline.evaluate.labels import evaluate_labels, real_images
from pipeline.runtime import Runtime
from stages.attention.settings import AttentionSettings
from stages.generate import Diffusion
from stages.label import ClassMask, SampleLabels
from stages.labelers import Labeler, invert
from stages.labelers.attention import AttentionLabeler
from stages.prompts import PromptSpec
from testbed.toy_shapes import write_scene_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

SPECS = [PromptSpec(0, "a photograph of a dog", ("dog",), 11),
         PromptSpec(1, "a photograph of a cat and a dog", ("cat", "dog"), 12)]
NAMES = [["dog"], ["cat", "dog"]]


def test_inversion_records_the_features_and_maps_sampling_records_at_the_capture_step(tiny_pipe):
    diffusion = Diffusion(tiny_pipe, steps=3, guidance=7.5, capture_step=1)
    # the last of 3 steps only: the step the features are captured at, so both paths record one UNet call
    labeler = AttentionLabeler(diffusion, AttentionSettings(levels=(0, 1), steps=(2 / 3, 1.0)))
    gen, maps = labeler.generate(SPECS, NAMES, capture_features=True)
    assert gen.timestep == diffusion.capture_timestep == labeler.timesteps[0]
    prompts = [s.prompt for s in SPECS]
    features, again = labeler.invert(gen.latents, gen.timestep, prompts, NAMES, gen.images.shape[1], True)
    assert {r: f.shape for r, f in features.items()} == {r: f.shape for r, f in gen.features.items()}
    for res in gen.features:
        torch.testing.assert_close(features[res], gen.features[res])
    for ours, theirs in zip(again, maps):  # maps are normalised, then raised to the 4th power through the
        # self-attention: a rounding difference between the two calls' batches grows about 4x there
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)

    images = torch.from_numpy(gen.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents = diffusion.latents_from_images(images, diffusion.capture_timestep, [5, 6])
    sampled = invert(diffusion, [labeler], gen.images, latents, diffusion.capture_timestep, prompts, NAMES)
    assert sampled.generation.latents.shape == gen.latents.shape and sampled.generation.timestep == gen.timestep
    assert sampled.generation.features is None  # the attention labeler reads no features
    assert [m.shape for m in sampled.attention_maps] == [m.shape for m in maps]


class Painter(Labeler):
    """Gives every pixel to the last class it is asked for (``blob``: a labeler that segments the salient
    object whatever it is named) or to the first (``first``: it never paints the class appended last)."""

    trained = False
    settings_keys = ()
    card_opening = ""

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def load(cls, models):
        raise NotImplementedError

    def label(self, sampled, requests):
        shape = sampled.generation.images.shape[1:3]
        k = -1 if self.name == "blob" else 0
        return [SampleLabels([ClassMask(r.class_ids[k], r.names[k], np.ones(shape, bool), 1.0)]) for r in requests]


def test_a_labeler_that_paints_an_absent_class_is_scored_so(tmp_path, cache_dir, monkeypatch):
    vocab = resolve_vocabulary("shapes")
    real = real_images(write_scene_dataset(tmp_path / "real", [c.name for c in vocab.classes], 0, 6, 32, seed=0),
                       "auto", None, vocab, 64)
    config = RunConfig(vocab="shapes", out=tmp_path / "out", preset_name="tiny", preset=load_preset("tiny"), n=1,
                       device="cpu", cache_dir=cache_dir)
    runtime = Runtime(config)
    monkeypatch.setattr(runtime, "labelers", lambda names: [Painter(name) for name in names])
    report = evaluate_labels(config, runtime, real, ("blob", "first"))
    assert report["scores"]["blob"]["absent_pixels"] == 1.0
    assert report["scores"]["first"]["absent_pixels"] == 0.0
    groups = report["by_classes"]
    assert groups["one_class"]["images"] + groups["multi_class"]["images"] == report["scored_images"] == 6
    assert groups["one_class"]["images"] and groups["multi_class"]["images"]
    one = groups["one_class"]["scores"]
    assert one["blob"] == one["first"]  # one class asked for: both give it every pixel
    truth = [real[i][1] for i in range(6)]
    shown = {c.name: [t for t in truth if (t == c.id).any() and len(set(np.unique(t)) - {0, 255}) == 1]
             for c in vocab.classes}
    ious = [sum(int((t == vocab[name].id).sum()) for t in ts) / sum(int((t != 255).sum()) for t in ts)
            for name, ts in shown.items() if ts and vocab[name].seen]
    assert ious and one["blob"]["miou_seen"] == pytest.approx(np.mean(ious))
