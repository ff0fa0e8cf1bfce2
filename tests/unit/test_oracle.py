"""Tests for the torchvision oracle (stages/oracle/torchvision_backend.py). No weights are ever downloaded."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from stages.oracle import (
    COCO_DETECTOR_CATEGORIES,
    COCO_WEIGHTS,
    Detection,
    TorchvisionOracle,
    build_maskrcnn,
    coco_weights_path,
    load_maskrcnn,
)
from stages.vocab import ClassInfo, Vocabulary, load_vocabulary
from stages.weights import WeightsMissingError

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64


def coco_id(name: str) -> int:
    return COCO_DETECTOR_CATEGORIES.index(name)


class FakeDetector(nn.Module):
    """Returns preset torchvision-format outputs and records the images it was given."""

    def __init__(self, outputs: list[dict[str, torch.Tensor]]):
        super().__init__()
        self.outputs = outputs
        self.calls: list[list[torch.Tensor]] = []

    def forward(self, images):
        self.calls.append(images)
        return self.outputs


def fake_output(dets: list[tuple[str, float, tuple[int, int, int, int]]]) -> dict[str, torch.Tensor]:
    """Outputs for one image: per detection (COCO category, score, xyxy box); soft mask 0.7 in the box, 0.3 outside."""
    masks = torch.full((len(dets), 1, SIZE, SIZE), 0.3)
    for i, (_, _, (x0, y0, x1, y1)) in enumerate(dets):
        masks[i, 0, y0:y1, x0:x1] = 0.7
    return {
        "boxes": torch.tensor([box for *_, box in dets], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([coco_id(name) for name, *_ in dets], dtype=torch.int64),
        "scores": torch.tensor([score for _, score, _ in dets], dtype=torch.float32),
        "masks": masks,
    }


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def voc():
    return load_vocabulary(ROOT / "configs/vocab/voc.yaml")


@pytest.fixture(scope="module")
def random_maskrcnn():
    torch.manual_seed(0)
    return build_maskrcnn(SIZE, box_score_thresh=0.0).eval()


@pytest.mark.parametrize("vocab_file", ["voc.yaml", "coco.yaml"])
def test_every_vocabulary_class_maps_to_a_coco_category(vocab_file):
    vocab = load_vocabulary(ROOT / "configs/vocab" / vocab_file)
    oracle = TorchvisionOracle(FakeDetector([]), vocab)
    assert set(oracle.label_ids) == {c.name for c in vocab.classes}
    for c in vocab.classes:
        assert COCO_DETECTOR_CATEGORIES[oracle.label_ids[c.name]] == c.detector_name


def test_coco_categories_come_from_torchvision():
    assert len(COCO_DETECTOR_CATEGORIES) == 91
    assert COCO_DETECTOR_CATEGORIES[0] == "__background__"
    assert COCO_DETECTOR_CATEGORIES[coco_id("couch")] == "couch" == COCO_DETECTOR_CATEGORIES[63]


@pytest.mark.parametrize("bad", ["sofa", "N/A", "__background__"])
def test_unknown_detector_name_is_rejected(bad):
    vocab = Vocabulary(name="bad", classes=(ClassInfo(1, "dog", True, "dog"), ClassInfo(2, "x", True, bad)))
    with pytest.raises(ValueError, match=bad):
        TorchvisionOracle(FakeDetector([]), vocab)


def test_oracle_picks_top_scoring_detection_of_the_requested_class(voc):
    outputs = [
        fake_output([
            ("dog", 0.95, (0, 0, 10, 10)),      # another class, higher score: ignored for "cat"
            ("cat", 0.60, (5, 5, 20, 20)),
            ("cat", 0.90, (30, 30, 50, 60)),    # the answer for "cat"
            ("cat", 0.70, (0, 40, 8, 64)),
            ("couch", 0.40, (0, 0, 64, 64)),    # below the score threshold
        ]),
        fake_output([
            ("person", 0.55, (1, 2, 3, 4)),
            ("couch", 0.80, (10, 20, 30, 40)),  # VOC "sofa" is the detector's "couch"
            ("tv", 0.49, (0, 0, 5, 5)),          # just below the threshold
        ]),
    ]
    detector = FakeDetector(outputs)
    oracle = TorchvisionOracle(detector, voc, score_threshold=0.5, mask_threshold=0.5)
    images = random_images(2)
    result = oracle.label(images, [["cat", "sofa", "bird"], ["sofa", "person", "tvmonitor", "cat"]])

    # one batched forward with float [0, 1] CHW images
    assert len(detector.calls) == 1 and len(detector.calls[0]) == 2
    first = detector.calls[0][0]
    assert first.shape == (3, SIZE, SIZE) and first.dtype == torch.float32
    torch.testing.assert_close(first, torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255)

    assert list(result[0]) == ["cat", "sofa", "bird"]
    cat = result[0]["cat"]
    assert isinstance(cat, Detection)
    assert cat.score == pytest.approx(0.90) and cat.box == (30.0, 30.0, 50.0, 60.0)
    expected = np.zeros((SIZE, SIZE), bool)
    expected[30:60, 30:50] = True
    assert cat.mask.dtype == bool and np.array_equal(cat.mask, expected)
    assert result[0]["sofa"] is None and result[0]["bird"] is None

    sofa = result[1]["sofa"]
    assert sofa.score == pytest.approx(0.80) and sofa.box == (10.0, 20.0, 30.0, 40.0)
    assert sofa.mask.sum() == 20 * 20
    assert result[1]["person"].score == pytest.approx(0.55)
    assert result[1]["tvmonitor"] is None and result[1]["cat"] is None


def test_oracle_thresholds_are_applied(voc):
    outputs = [fake_output([("dog", 0.30, (0, 0, 10, 10))])]
    strict = TorchvisionOracle(FakeDetector(outputs), voc, score_threshold=0.31)
    assert strict.label(random_images(1), [["dog"]]) == [{"dog": None}]
    dog = TorchvisionOracle(FakeDetector(outputs), voc, score_threshold=0.3).label(random_images(1), [["dog"]])
    dog = dog[0]["dog"]
    assert dog.mask.sum() == 100
    loose = TorchvisionOracle(FakeDetector(outputs), voc, score_threshold=0.3, mask_threshold=0.2)
    full = loose.label(random_images(1), [["dog"]])
    assert full[0]["dog"].mask.all()


def test_oracle_with_no_detections_and_bad_requests(voc):
    oracle = TorchvisionOracle(FakeDetector([fake_output([])]), voc)
    assert oracle.label(random_images(1), [["dog", "cat"]]) == [{"dog": None, "cat": None}]
    assert oracle.label(random_images(0), []) == []
    with pytest.raises(ValueError, match="couch"):
        oracle.label(random_images(1), [["couch"]])  # a detector name, not a VOC class name
    with pytest.raises(ValueError, match="2 images"):
        oracle.label(random_images(2), [["dog"]])


def test_random_maskrcnn_runs_at_native_size(random_maskrcnn, voc):
    model = random_maskrcnn
    assert model.transform.min_size == (SIZE,) and model.transform.max_size == SIZE
    seen_shapes = []
    hook = model.backbone.register_forward_pre_hook(lambda _, args: seen_shapes.append(tuple(args[0].shape)))
    try:
        result = TorchvisionOracle(model, voc, score_threshold=0.0).label(random_images(2),
                                                                           [["person", "dog", "sofa"], ["cat"]])
    finally:
        hook.remove()
    assert seen_shapes == [(2, 3, SIZE, SIZE)]  # one batched forward, no resize
    assert [list(r) for r in result] == [["person", "dog", "sofa"], ["cat"]]
    found = [d for r in result for d in r.values() if d is not None]
    assert found, "with thresholds at 0 a random detector should return some instances"
    for d in found:
        assert d.mask.shape == (SIZE, SIZE) and d.mask.dtype == bool
        assert 0.0 <= d.score <= 1.0 and len(d.box) == 4


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch.hub dir (what torch.hub.set_dir sets; monkeypatch restores it) and no downloads."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    attempts = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *args, **kwargs: attempts.append(args))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *args, **kwargs: attempts.append(args))
    yield tmp_path / "hub"
    assert attempts == [], "the oracle tried to download weights"


def test_missing_coco_weights_raise_without_downloading(empty_hub):
    start = time.monotonic()
    with pytest.raises(WeightsMissingError) as err:
        load_maskrcnn(SIZE, "COCO_V1")
    assert time.monotonic() - start < 10
    message = str(err.value)
    filename = Path(COCO_WEIGHTS.url).name
    assert "\n" not in message
    assert filename in message and str(empty_hub / "checkpoints") in message and "--oracle-weights" in message
    assert coco_weights_path() == empty_hub / "checkpoints" / filename
    assert isinstance(err.value, RuntimeError)


def assert_same_outputs(a: nn.Module, b: nn.Module):
    images = list(torch.from_numpy(random_images(1, seed=1)).permute(0, 3, 1, 2).float() / 255)
    with torch.inference_mode():
        out_a, out_b = a.eval()(images), b.eval()(images)
    assert out_a[0]["scores"].numel() > 0
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(out_a[0][key], out_b[0][key])


def test_coco_weights_are_downloaded_once_where_downloads_are_allowed(empty_hub, random_maskrcnn, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fetched = []

    def fake_download(url, dst, hash_prefix=None):
        fetched.append((url, hash_prefix))
        torch.save(random_maskrcnn.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    assert_same_outputs(random_maskrcnn, load_maskrcnn(SIZE, "COCO_V1", box_score_thresh=0.0))
    load_maskrcnn(SIZE, "COCO_V1")  # now read from the cache
    assert fetched == [(COCO_WEIGHTS.url, Path(COCO_WEIGHTS.url).name.split("-")[-1].split(".")[0])]

    def no_network(*args, **kwargs):
        raise OSError("no route to host")

    coco_weights_path().unlink()
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsMissingError, match="not downloadable here"):
        load_maskrcnn(SIZE, "COCO_V1")


def test_load_maskrcnn_round_trips_state_dicts(random_maskrcnn, tmp_path):
    state = random_maskrcnn.state_dict()
    torch.save(state, tmp_path / "oracle.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "oracle.safetensors"))
    for weights in (tmp_path / "oracle.pth", str(tmp_path / "oracle.safetensors")):
        loaded = load_maskrcnn(SIZE, weights, box_score_thresh=0.0)
        assert not loaded.training
        assert_same_outputs(random_maskrcnn, loaded)
    with pytest.raises(WeightsMissingError, match="safetensors"):
        load_maskrcnn(SIZE, tmp_path / "oracle.bin")
    with pytest.raises(WeightsMissingError, match="do not exist"):
        load_maskrcnn(SIZE, tmp_path / "missing.pth")
    save_file({"backbone.body.conv1.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsMissingError, match="do not fit") as err:
        load_maskrcnn(SIZE, tmp_path / "other.safetensors")
    assert "\n" not in str(err.value)


def test_load_coco_weights_from_the_hub_cache(random_maskrcnn, empty_hub):
    path = coco_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(random_maskrcnn.state_dict(), path)
    assert_same_outputs(random_maskrcnn, load_maskrcnn(SIZE, "COCO_V1", box_score_thresh=0.0))


def test_default_score_threshold_is_torchvision_default():
    assert build_maskrcnn(SIZE).roi_heads.score_thresh == 0.05
