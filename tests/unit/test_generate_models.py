import numpy as np
import pytest
import torch

from stages.generate import SCHEDULERS, Diffusion
from stages.models import load_stable_diffusion
from stages.prompts import PromptSpec
from stages.weights import WeightsMissingError
from testbed.random_presets import clip_tokenizer

SPECS = [PromptSpec(0, "a photograph of a dog", ("dog",), 11),
         PromptSpec(1, "a photograph of a cat and a dog", ("cat", "dog"), 12)]


def test_tokenizer_is_the_real_clip_bpe():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    # ids of openai/clip-vit-large-patch14 (SD 1.x's tokenizer) for this text
    assert tok("a photograph of a dog").input_ids == [49406, 320, 8853, 539, 320, 1929, 49407]


def test_tiny_preset_loads_through_from_pretrained(tiny_dir, tiny_pipe):
    assert (tiny_dir / "model_index.json").exists() and (tiny_dir / "maskrcnn.safetensors").exists()
    assert type(tiny_pipe).__name__ == "StableDiffusionPipeline"
    assert type(tiny_pipe.scheduler).__name__ == "DDIMScheduler"


def test_generation_is_deterministic_and_keeps_the_capture_step(tiny_pipe):
    diffusion = Diffusion(tiny_pipe, steps=4, guidance=7.5, capture_step=2)
    a = diffusion.generate(SPECS, capture_features=False)
    b = diffusion.generate(SPECS, capture_features=False)
    assert a.images.shape == (2, 64, 64, 3) and a.images.dtype == np.uint8
    assert a.latents.shape == (2, 4, 16, 16) and a.finite.all()
    np.testing.assert_array_equal(a.images, b.images)
    assert a.timestep == int(tiny_pipe.scheduler.timesteps[2])  # 2nd step from the end of 4
    assert a.features is None


def test_features_grouped_by_resolution_with_cfg_halves_on_channels(tiny_pipe):
    diffusion = Diffusion(tiny_pipe, steps=3, guidance=7.5, capture_step=1, features="blocks")
    gen = diffusion.generate(SPECS, capture_features=True)
    unet = tiny_pipe.unet.config
    assert sorted(gen.features) == [4, 8, 16]
    # every down/mid/up block output, doubled by the unconditional+conditional concatenation
    total = sum(f.shape[1] for f in gen.features.values())
    blocks = 2 * (sum(unet.block_out_channels) + unet.block_out_channels[-1] + sum(unet.block_out_channels))
    assert total == blocks
    for res, feats in gen.features.items():
        assert feats.shape[0] == 2 and feats.shape[-2:] == (res, res)


def test_batched_features_match_single_sample_runs(tiny_pipe):
    """Batch > 1 under classifier-free guidance: each sample gets its own halves, not its neighbour's."""
    diffusion = Diffusion(tiny_pipe, steps=3, guidance=7.5, capture_step=1)
    batched = diffusion.generate(SPECS, capture_features=True)
    for i, spec in enumerate(SPECS):
        alone = diffusion.generate([spec], capture_features=True)
        assert np.abs(alone.images[0].astype(int) - batched.images[i]).max() <= 1  # float rounding
        for res in alone.features:
            torch.testing.assert_close(alone.features[res][0], batched.features[res][i], atol=1e-4, rtol=1e-4)


def test_features_recomputed_from_the_stored_latent_equal_the_in_flight_ones(tiny_pipe):
    diffusion = Diffusion(tiny_pipe, steps=3, guidance=7.5, capture_step=2)
    gen = diffusion.generate(SPECS, capture_features=True)
    again = diffusion.features_from_latent(gen.latents, gen.timestep, [s.prompt for s in SPECS])
    for res in gen.features:
        torch.testing.assert_close(again[res], gen.features[res])


@pytest.fixture
def restored_scheduler(tiny_pipe):
    """The session's pipeline keeps its DDIM scheduler after a test that samples with another solver."""
    saved = tiny_pipe.scheduler
    yield
    tiny_pipe.scheduler = saved


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_each_scheduler_samples_deterministically_and_its_capture_recomputes(tiny_pipe, restored_scheduler,
                                                                            scheduler):
    """Per solver: the same seeds give the same images, whatever the batch; the capture step (1: the last UNet
    call) keeps that call's timestep and input, from which phase B's one UNet pass recomputes its features."""
    diffusion = Diffusion(tiny_pipe, steps=4, guidance=7.5, capture_step=1, scheduler=scheduler)
    gen = diffusion.generate(SPECS, capture_features=True)
    np.testing.assert_array_equal(diffusion.generate(SPECS, capture_features=False).images, gen.images)
    alone = diffusion.generate(SPECS[1:], capture_features=False)
    assert np.abs(alone.images[0].astype(int) - gen.images[1]).max() <= 1  # float rounding only
    last = {"ddim": 1, "dpmsolver++": 250, "unipc": 250}[scheduler]  # DDIM "leading" + offset 1; linspace: 999/4
    assert gen.timestep == diffusion.capture_timestep == last
    again = diffusion.features_from_latent(gen.latents, gen.timestep, [s.prompt for s in SPECS])
    for res in gen.features:
        torch.testing.assert_close(again[res], gen.features[res])
    if scheduler != "ddim":  # a different solver: different images from the same noise
        ddim = Diffusion(tiny_pipe, steps=4, guidance=7.5, capture_step=1)
        assert ddim.capture_timestep == 1 and ddim.solver.config.set_alpha_to_one is False  # the model's own DDIM
        assert np.abs(ddim.generate(SPECS, capture_features=False).images.astype(int) - gen.images).mean() > 1


def test_capture_step_is_validated(tiny_pipe):
    with pytest.raises(ValueError, match="capture_step"):
        Diffusion(tiny_pipe, steps=3, guidance=7.5, capture_step=4)


def test_missing_sd_weights_fail_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsMissingError, match="--sd-path") as err:
        load_stable_diffusion("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsMissingError, match="model_index.json"):
        load_stable_diffusion(str(tmp_path / "empty"))
    with pytest.raises(WeightsMissingError, match="does not exist"):
        load_stable_diffusion(str(tmp_path / "no-such-folder"))
