"""The detectron2 oracle backend (stages/oracle/detectron2_backend.py) with random weights: the model
zoo's configs build, its contiguous category ids reach the right COCO categories by name, checkpoints
load (or fail in one line), and a missing detectron2 is one line before any model loads."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
import yaml
from detectron2_fixtures import MODEL_ZOO_CONFIG, needs_detectron2, random_checkpoint, write_small_config

from pipeline.cli.options import run_config
from pipeline.config import CONFIG_DIR, ConfigError, RunConfig, load_preset, resolve_vocabulary
from pipeline.runtime import Runtime
from stages.labelers.attention import AttentionLabeler
from stages.oracle import (
    COCO_DETECTOR_CATEGORIES,
    OracleBackendError,
    TorchvisionOracle,
    detector_label_ids,
    import_detectron2_backend,
)
from stages.weights import WeightsMissingError

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")
LSJ_CONFIG = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"  # a LazyConfig, as the new baselines and ViTDet


@pytest.fixture(scope="module")
def d2():
    return import_detectron2_backend()


@pytest.fixture(scope="module")
def small(tmp_path_factory, d2):
    """The shrunk test config and a random checkpoint of it."""
    folder = tmp_path_factory.mktemp("d2")
    config = write_small_config(folder)
    return config, random_checkpoint(config, folder / "small.pth")


@needs_detectron2
@pytest.mark.parametrize("config, parameters", [(MODEL_ZOO_CONFIG, 44_343_216), (LSJ_CONFIG, 46_301_232)])
def test_model_zoo_configs_build_a_coco_mask_rcnn(d2, voc, config, parameters):
    cfg = d2.load_config(config)
    model = d2.build_detectron2_model(cfg, score_threshold=0.0)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert d2.input_resize(cfg) == (800, 1333)  # the scale the model zoo tests at
    assert d2.config_categories(cfg)[:3] == ("person", "bicycle", "car") and model.roi_heads.num_classes == 80
    oracle = d2.Detectron2Oracle(model, voc, d2.config_categories(cfg), resize=(64, 64), score_threshold=0.0)
    (result,) = oracle.label(np.zeros((1, 32, 32, 3), np.uint8), [["dog", "person"]])
    assert list(result) == ["dog", "person"]


@needs_detectron2
def test_configs_the_oracle_cannot_use_are_one_line(d2, tmp_path):
    with pytest.raises(OracleBackendError, match="without instance masks"):
        d2.build_detectron2_model(d2.load_config("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    with pytest.raises(OracleBackendError, match="not a model-zoo config"):
        d2.load_config("COCO-InstanceSegmentation/no_such_model.yaml")
    (tmp_path / "bad.yaml").write_text("MODEL: {NO_SUCH_KEY: 1}\n")
    with pytest.raises(OracleBackendError, match="cannot be loaded: KeyError") as err:
        d2.load_config(str(tmp_path / "bad.yaml"))
    assert "\n" not in str(err.value)


@needs_detectron2
def test_all_80_coco_categories_map_to_the_same_coco_category_in_both_backends(d2):
    """Through names, detectron2's contiguous ids (0..79) and torchvision's (COCO's category ids,
    1..90 with gaps) reach the same COCO category, by detectron2's own id table, for all 80 classes."""
    from detectron2.data import MetadataCatalog

    coco = resolve_vocabulary("coco")
    cfg = d2.load_config(MODEL_ZOO_CONFIG)
    d2_ids = detector_label_ids(coco, d2.config_categories(cfg))
    torchvision_ids = TorchvisionOracle(torch.nn.Identity(), coco).label_ids  # index in torchvision's list = COCO id
    coco_id_of = {contiguous: coco_id for coco_id, contiguous in
                  MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_dataset_id_to_contiguous_id.items()}
    assert len(coco.classes) == 80 and sorted(d2_ids.values()) == list(range(80))
    assert {name: coco_id_of[i] for name, i in d2_ids.items()} == torchvision_ids
    assert torchvision_ids["hair drier"] == 89 and d2_ids["hair drier"] == 78  # after COCO's 10 gaps
    assert COCO_DETECTOR_CATEGORIES[torchvision_ids["hair drier"]] == "hair drier"


@needs_detectron2
def test_checkpoints_load_as_pth_and_model_zoo_pkl(d2, small, voc, tmp_path):
    config, pth = small
    state = torch.load(pth, weights_only=True)["model"]
    with open(tmp_path / "small.pkl", "wb") as f:  # the model zoo's format: numpy arrays under "model"
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)
    image = np.random.default_rng(1).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    outputs = []
    for weights in (pth, tmp_path / "small.pkl"):
        oracle = d2.load_detectron2_oracle(str(config), weights, voc, input_size=None, score_threshold=0.0)
        assert oracle.resize == (64, 64)  # auto: the size the config tests at
        found = oracle.candidates(image)[0]
        assert found.labels.numel() > 0
        outputs.append((found.labels, found.scores, found.boxes))
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b)


@needs_detectron2
def test_checkpoints_that_do_not_fit_are_one_line(d2, small, tmp_path):
    config, pth = small
    model = d2.build_detectron2_model(d2.load_config(MODEL_ZOO_CONFIG))  # R50, not the small R18
    with pytest.raises(WeightsMissingError, match="do not fit") as err:
        d2.load_weights(model, pth)
    assert "\n" not in str(err.value)
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMissingError, match="cannot be read"):
        d2.load_weights(model, tmp_path / "corrupt.pth")
    with pytest.raises(WeightsMissingError, match="do not exist"):
        d2.load_weights(model, tmp_path / "missing.pkl")
    with pytest.raises(WeightsMissingError, match=".pkl or .pth"):
        d2.load_weights(model, tmp_path / "weights.safetensors")


def detectron2_config(tmp_path, **preset) -> RunConfig:
    preset = load_preset("tiny", {"oracle_backend": "detectron2", "oracle_config": MODEL_ZOO_CONFIG,
                                  "oracle_weights": str(tmp_path / "model_final.pkl"), **preset})
    return RunConfig(vocab="voc", out=tmp_path / "out", preset_name="d2", preset=preset, n=1, device="cpu",
                     cache_dir=tmp_path / "cache")


def test_oracle_weights_flag_replaces_the_detectron2_checkpoint(tmp_path):
    preset = yaml.safe_load((CONFIG_DIR / "presets" / "tiny.yaml").read_text())
    preset.update(oracle_backend="detectron2", oracle_config=MODEL_ZOO_CONFIG, oracle_weights="/models/zoo.pkl")
    (tmp_path / "d2.yaml").write_text(yaml.safe_dump(preset))
    flags = {"vocab": "voc", "out": tmp_path / "out", "models": str(tmp_path / "d2.yaml"), "seed": 0, "device": "cpu"}
    assert run_config(**flags).preset.oracle_weights == "/models/zoo.pkl"
    assert run_config(**flags, oracle_weights="/models/mine.pth").preset.oracle_weights == "/models/mine.pth"
    with pytest.raises(ConfigError, match=r"oracle_weights: .*'COCO_V1': the detectron2 backend takes a \.pkl"):
        run_config(**flags, oracle_weights="COCO_V1")


@pytest.mark.parametrize("settings, message", [
    ({"oracle_backend": "detectron2"}, "oracle_config: .*needs one: a model-zoo config name"),
    ({"oracle_config": MODEL_ZOO_CONFIG}, "oracle_config: .*set oracle_backend: detectron2"),
    ({"oracle_backend": "mmdet"}, "oracle_backend: Input should be 'torchvision' or 'detectron2'"),
])
def test_presets_that_mix_up_the_backends_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_preset("tiny", settings)


def test_detectron2_runs_at_its_configs_input_size_unless_the_preset_sets_one(tmp_path):
    assert Runtime(detectron2_config(tmp_path)).oracle_input_size is None
    assert Runtime(detectron2_config(tmp_path, oracle_input_size=320)).oracle_input_size == 320


def test_missing_detectron2_is_one_line_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # what an absent package looks like to import
    monkeypatch.delitem(sys.modules, "stages.oracle.detectron2_backend", raising=False)
    runtime = Runtime(detectron2_config(tmp_path))
    with pytest.raises(OracleBackendError) as err:
        runtime.check_weights(oracle=True, grounding=False)
    message = str(err.value)
    assert "\n" not in message and "detectron2" in message and "--no-build-isolation" in message
    assert "datagen[detectron2]" in message
    assert not (tmp_path / "cache").exists(), "the tiny models were built before the check"


def test_the_attention_labeler_needs_no_detectron2_and_ignores_the_oracle_settings(tmp_path, cache_dir, monkeypatch):
    """--labeler attention uses no oracle: a detectron2 preset runs it without detectron2 installed, and
    its dataset is the same whichever oracle the preset names."""
    monkeypatch.setitem(sys.modules, "detectron2", None)
    monkeypatch.delitem(sys.modules, "stages.oracle.detectron2_backend", raising=False)
    config = detectron2_config(tmp_path).model_copy(update={"labeler": "attention", "cache_dir": cache_dir})
    Runtime(config).check_weights(oracle=False, grounding=False, labelers=(AttentionLabeler,))  # no OracleBackendError
    torchvision = config.model_copy(update={"preset": load_preset("tiny")})
    assert config.fingerprint() == torchvision.fingerprint()
    assert config.model_copy(update={"labeler": "grounding"}).fingerprint() != \
        torchvision.model_copy(update={"labeler": "grounding"}).fingerprint()
