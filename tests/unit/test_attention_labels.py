"""The attention labeler on the tiny preset: token positions, what is recorded (conditional half, chosen
layers and steps, fused attention everywhere else), map and mask shapes, batch independence."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from pipeline.config import ConfigError, load_preset
from stages.attention.maps import attention_masks, class_token_positions, otsu_threshold
from stages.attention.record import AttentionRecorder, AttentionRecordingError, RecordingProcessor
from stages.attention.settings import AttentionSettings, SelfAttentionRefinement
from stages.generate import Diffusion
from stages.labelers.attention import AttentionLabeler
from stages.prompts import PromptSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")

PAIR = PromptSpec(0, "a photograph of a potted plant and a dog", ("pottedplant", "dog"), 11)
ONE = PromptSpec(1, "a photograph of a cat", ("cat",), 12)
OTHER = PromptSpec(2, "a photograph of a sheep and a bus", ("sheep", "bus"), 13)
NAMES = {0: ["potted plant", "dog"], 1: ["cat"], 2: ["sheep", "bus"]}
REFINED = AttentionSettings(levels=(0, 1), refine=SelfAttentionRefinement(level=0), threshold=0.6,
                            uncertain=0.5)


def names(specs):
    return [NAMES[s.index] for s in specs]


@pytest.fixture(scope="module")
def diffusion(tiny_pipe):
    return Diffusion(tiny_pipe, steps=4, guidance=7.5, capture_step=1)


def test_class_tokens_are_found_in_prompt_order_multi_token_names_included(tiny_pipe):
    tok = tiny_pipe.tokenizer  # the real CLIP BPE vocabulary
    ids = tok("a photograph of a potted plant and a plant").input_ids
    positions = class_token_positions(tok, "a photograph of a potted plant and a plant", ["potted plant", "plant"])
    assert positions == [[5, 6], [9]]  # BOS, a, photograph, of, a, potted, plant, and, a, plant
    assert ids[6] == ids[9] == tok("plant", add_special_tokens=False).input_ids[0]
    with pytest.raises(AttentionRecordingError, match="'cow'"):
        class_token_positions(tok, "a photograph of a dog", ["cow"])


def test_recording_keeps_fused_attention_on_other_layers_and_images_unchanged(diffusion):
    unet = diffusion.pipe.unet
    before = dict(unet.attn_processors)
    assert all(isinstance(p, AttnProcessor2_0) for p in before.values())
    labeler = AttentionLabeler(diffusion, AttentionSettings(levels=(1,), steps=(0.5, 1.0)))
    recorded = {layer.name for layer in labeler.cross_layers}
    assert recorded and all(".attn2." in name for name in recorded)  # the 8x8 cross-attention layers only
    with AttentionRecorder(unet, labeler.cross_layers, set(labeler.timesteps)) as recorder:
        during = dict(unet.attn_processors)
        gen = diffusion.generate([PAIR], capture_features=False)
    for name, processor in during.items():
        if name in recorded:
            assert isinstance(processor, RecordingProcessor)
        else:
            assert processor is before[name]  # the very same fused AttnProcessor2_0 instance
    assert dict(unet.attn_processors) == before  # restored on exit
    assert len(labeler.timesteps) == 2  # steps [0.5, 1) of 4: the last two
    assert recorder.take(8).calls == len(recorded) * 2  # each recorded layer at each recorded step
    np.testing.assert_array_equal(gen.images, diffusion.generate([PAIR], capture_features=False).images)


def test_maps_come_from_the_conditional_half_of_the_guided_batch(diffusion):
    unet = diffusion.pipe.unet
    labeler = AttentionLabeler(diffusion, AttentionSettings(levels=(0,)))
    latent = diffusion.initial_noise([5])
    t = labeler.timesteps[0]

    def recorded(unconditional: str, conditional: str) -> torch.Tensor:
        embeddings = torch.cat([diffusion.encode_prompts([text])[1:] for text in (unconditional, conditional)])
        with AttentionRecorder(unet, labeler.cross_layers, {t}) as recorder, torch.inference_mode():
            unet(torch.cat([latent, latent]), t, encoder_hidden_states=embeddings)
        return recorder.take(16).cross

    base = recorded("", "a photograph of a dog")
    assert base.shape == (1, 77, 16, 16)
    torch.testing.assert_close(base.sum(1), torch.ones(1, 16, 16))  # a softmax over the 77 tokens
    torch.testing.assert_close(recorded("a photograph of a cat", "a photograph of a dog"), base)
    assert not torch.allclose(recorded("", "a photograph of a cat"), base, atol=1e-4)


def test_maps_and_masks_have_the_image_shape_and_masks_are_disjoint(diffusion):
    labeler = AttentionLabeler(diffusion, REFINED)
    assert {layer.resolution for layer in labeler.self_layers} == {16}
    gen, maps = labeler.generate([PAIR, ONE], names([PAIR, ONE]))
    assert gen.images.shape == (2, 64, 64, 3) and [m.shape for m in maps] == [(2, 64, 64), (1, 64, 64)]
    for m in maps:  # each class's map spans [0, 1]
        assert torch.allclose(m.amax((1, 2)), torch.ones(len(m))) and torch.allclose(m.amin((1, 2)), torch.zeros(1))
    labels = labeler.masks(maps[0], [16, 12], list(PAIR.classes))
    assert all(m.mask.shape == (64, 64) for m in labels.masks) and labels.uncertain.shape == (64, 64)
    covered = sum(m.mask.astype(int) for m in labels.masks) + labels.uncertain
    assert covered.max() <= 1  # classes and uncertain pixels never overlap


def test_a_samples_maps_do_not_depend_on_its_batch(diffusion):
    # Unrefined: the tiny UNet's random self-attention, raised to the 4th power, leaves maps constant to float32
    # rounding, and min-max normalisation would compare that rounding, which differs with the CPU's kernels.
    labeler = AttentionLabeler(diffusion, AttentionSettings(levels=(0, 1), threshold=0.6, uncertain=0.5))
    _, alone = labeler.generate([PAIR], names([PAIR]))
    _, first = labeler.generate([PAIR, OTHER], names([PAIR, OTHER]))
    _, second = labeler.generate([ONE, PAIR], names([ONE, PAIR]))
    for batched in (first[0], second[1]):
        torch.testing.assert_close(batched, alone[0], atol=1e-4, rtol=0)  # float32 sums in another order
    torch.testing.assert_close(second[0], labeler.generate([ONE], names([ONE]))[1][0], atol=1e-4, rtol=0)


def test_overlaps_go_to_the_strongest_class_and_the_uncertain_band_is_kept_apart():
    maps = torch.tensor([[[0.9, 0.7, 0.55, 0.1]], [[0.8, 0.8, 0.1, 0.0]]])  # (2 classes, 1, 4)
    labels = attention_masks(maps, [1, 2], ["a", "b"], threshold=0.6, uncertain=0.5)
    assert [m.name for m in labels.masks] == ["a", "b"]
    np.testing.assert_array_equal(labels.masks[0].mask, [[True, False, False, False]])
    np.testing.assert_array_equal(labels.masks[1].mask, [[False, True, False, False]])
    np.testing.assert_array_equal(labels.uncertain, [[False, False, True, False]])


def test_otsu_splits_two_modes():
    values = torch.cat([torch.full((300,), 0.2), torch.full((100,), 0.7)]) + torch.linspace(-0.05, 0.05, 400)
    assert values[299] < otsu_threshold(values) < values[300]  # 0.225 .. 0.7
    labels = attention_masks(values.reshape(1, 20, 20), [3], ["a"], threshold="otsu")
    assert labels.masks[0].mask.sum() == 100


def test_settings_that_do_not_fit_fail_with_one_line(diffusion):
    with pytest.raises(AttentionRecordingError, match=r"at levels \[0 \(16x16\), 1 \(8x8\), 2 \(4x4\)\]"):
        AttentionLabeler(diffusion, AttentionSettings(levels=(3,)))
    with pytest.raises(AttentionRecordingError, match=r"refine.level 2: .* at levels \[0 \(16x16\), 1 \(8x8\)\]"):
        AttentionLabeler(diffusion, AttentionSettings(blocks=("down",), refine=SelfAttentionRefinement(level=2)))
    with pytest.raises(ConfigError, match="resolutions .* was replaced by levels"):  # a preset written before levels
        load_preset("tiny", {"attention": {"resolutions": [16]}})
    with pytest.raises(ConfigError, match="attention.steps"):
        load_preset("tiny", {"attention": {"steps": [0.91, 0.95]}})  # none of the 10 steps
    for bad in ({"uncertain": 0.7, "threshold": 0.6}, {"threshold": "otsu", "uncertain": 0.3}, {"steps": [0.5, 0.2]}):
        with pytest.raises(ConfigError, match="attention"):
            load_preset("tiny", {"attention": bad})


@pytest.mark.parametrize("latent", [16, 8])  # 64 and 32 px: the tiny UNet at two image sizes
def test_the_sd15_settings_hold_at_another_image_size(tiny_dir, latent):
    """The sd15 preset's attention section names UNet levels, so it fits the same UNet at any size: its
    cross-attention at level 2 and refinement at level 1 are 1/4 and 1/2 of the latent's side."""
    from stages.models import load_stable_diffusion

    pipe = load_stable_diffusion(str(tiny_dir))
    pipe.unet.register_to_config(sample_size=latent)
    labeler = AttentionLabeler(Diffusion(pipe, steps=2, guidance=7.5, capture_step=1), load_preset("sd15").attention)
    assert {layer.resolution for layer in labeler.cross_layers} == {latent // 4}
    assert {layer.resolution for layer in labeler.self_layers} == {latent // 2}
    gen, maps = labeler.generate([ONE], names([ONE]))
    side = latent * pipe.vae_scale_factor
    assert gen.images.shape == (1, side, side, 3) and maps[0].shape == (1, side, side)


def test_a_loaded_unet_samples_at_the_preset_image_size(tmp_path, tiny_dir, cache_dir):
    """A model folder built (or trained) at 64 px, run by a preset at 32 px: the run samples 32 px images, and
    the attention levels are read off that size, not the folder's."""
    from pipeline.config import RunConfig
    from pipeline.runtime import Runtime

    preset = load_preset("tiny", {"image_size": 32, "sd": str(tiny_dir), "steps": 2})
    runtime = Runtime(RunConfig(vocab="voc", out=tmp_path / "out", preset_name="tiny", preset=preset, n=1,
                                device="cpu", cache_dir=cache_dir))
    labeler = AttentionLabeler(runtime.diffusion, preset.attention)
    gen, maps = labeler.generate([ONE], names([ONE]))
    assert gen.images.shape == (1, 32, 32, 3) and maps[0].shape == (1, 32, 32)
