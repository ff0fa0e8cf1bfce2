"""Settings that decide what the labels look like: which UNet outputs are features, guidance per
phase, the oracle's input size, and the filter that keeps a missing object from becoming background."""

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from pipeline.config import ConfigError, RunConfig, load_preset
from pipeline.runtime import Runtime
from stages.generate import FeatureCapture, feature_layers
from stages.label import ClassMask, missing_classes


def sd_layout_unet() -> UNet2DConditionModel:
    """SD 1.x's block layout (4 levels, 2 layers each, attention in the first three) at a tiny width."""
    return UNet2DConditionModel(sample_size=8, block_out_channels=(8, 8, 8, 8), norm_num_groups=4,
                                cross_attention_dim=8, attention_head_dim=2)


def test_official_features_are_the_25_blocks_of_sd_and_include_encoder_features_at_the_finest_level():
    unet = sd_layout_unet().eval()
    assert len(feature_layers(unet, "official")) == 25 and len(feature_layers(unet, "blocks")) == 9
    shapes = {}
    for layout in ("official", "blocks"):
        capture = FeatureCapture(unet, layout)
        capture.armed = True
        with torch.no_grad():
            unet(torch.zeros(2, 4, 8, 8), 1, encoder_hidden_states=torch.zeros(2, 77, 8))
        shapes[layout] = {r: f.shape[1] for r, f in capture.take().items()}
        capture.remove()
    # finest level (x2 for the guided halves): blocks has the last two up blocks' outputs; official has
    # conv_in, the first level's 2 encoder layers, the upsampler into it and its 3 decoder layers
    assert shapes["blocks"][8] == 2 * 8 * 2 and shapes["official"][8] == 2 * 8 * 7
    assert set(shapes["official"]) == set(shapes["blocks"]) == {1, 2, 4, 8}
    with pytest.raises(ValueError, match="feature layout"):
        feature_layers(unet, "all")


def test_a_prompted_class_without_a_big_enough_mask_is_missing():
    mask = np.zeros((10, 10), bool)
    mask[:2, :5] = True  # 10% of the image
    masks = [ClassMask(12, "dog", mask, 0.9)]
    assert missing_classes(masks, ["dog", "sheep"], 0.0) == ["sheep"]
    assert missing_classes(masks, ["dog"], 0.1) == [] and missing_classes(masks, ["dog"], 0.11) == ["dog"]


def test_guidance_is_set_per_phase_or_by_one_number():
    assert load_preset("sd15").guidance.model_dump() == {"oracle": 5.0, "label": 7.5}
    assert load_preset("tiny", {"guidance": 3}).guidance.model_dump() == {"oracle": 3.0, "label": 3.0}
    with pytest.raises(ConfigError, match="guidance"):
        load_preset("tiny", {"guidance": {"bootstrap": 5.0}})


def test_the_oracle_runs_at_cocos_scale_on_a_gpu_and_at_image_size_on_a_cpu(tmp_path):
    def runtime(**preset):
        config = RunConfig(vocab="voc", out=tmp_path, preset_name="sd15", n=1, device="cpu",
                           preset=load_preset("sd15", preset))
        return Runtime(config)

    assert runtime().oracle_input_size == 512
    gpu = runtime()
    gpu.device = "cuda"  # what resolve_device gives on a machine with a GPU
    assert gpu.oracle_input_size == 800
    assert runtime(oracle_input_size=640).oracle_input_size == 640
    with pytest.raises(ConfigError, match="oracle_input_size"):
        load_preset("sd15", {"oracle_input_size": 0})
