"""The downstream segmenter: the full-resolution UNet, the class-balanced loss's weights, the preset's checks."""

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.evaluate.zs3.config import load_segmenter_preset
from pipeline.evaluate.zs3.train import TrainState
from stages.segmenter import build_segmenter, median_frequency_weights, predict, segmentation_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.mark.parametrize("size", [(32, 32), (20, 28)])
def test_unet_predicts_at_full_resolution(size):
    model = build_segmenter("unet_small", 5).eval()
    out = model(torch.zeros(2, 3, *size))
    assert set(out) == {"out"} and out["out"].shape == (2, 5, *size)


def squares(n: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of one red (class 1) or blue (class 2) square at a random place on grey, and their masks."""
    g = torch.Generator().manual_seed(0)
    images, masks = torch.zeros(n, 3, size, size), torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        k = i % 2 + 1
        y, x = torch.randint(0, size - 6, (2,), generator=g).tolist()
        masks[i, y:y + 6, x:x + 6] = k
        images[i, k - 1][masks[i] == k] = 2.0  # channel 0 red, 1 blue; the grey background is 0
    return images, masks


def test_unet_learns_to_segment_constructed_squares():
    torch.manual_seed(0)
    images, masks = squares(16)
    model = build_segmenter("unet_small", 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = segmentation_loss(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    pred = predict(model.eval(), images)
    for k in (1, 2):
        iou = ((pred == k) & (masks == k)).sum() / ((pred == k) | (masks == k)).sum()
        assert iou > 0.8, (k, float(iou))
    assert losses[-1] < 0.25 * losses[0]


def test_median_frequency_weights():
    pixels = torch.tensor([800, 100, 50, 0, 25])
    # median of the present counts (800, 100, 50, 25) is torch's lower middle: 50
    assert median_frequency_weights(pixels).tolist() == pytest.approx([1 / 16, 0.5, 1.0, 0.0, 2.0])
    assert median_frequency_weights(pixels, 0.5).tolist() == pytest.approx([0.25, 0.5 ** 0.5, 1.0, 0.0, 2 ** 0.5])
    assert median_frequency_weights(pixels, 0.0).tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_class_weights_count_the_labels_trained_on_so_far():
    state = TrainState(None, None, None, None, class_balance=1.0, pixels=torch.zeros(3, dtype=torch.int64))
    first = torch.tensor([[[0, 0, 0, 1], [0, 0, 255, 255]]])  # 255 is ignored, class 2 not seen yet
    assert state.class_weights(first).tolist() == pytest.approx([0.2, 1.0, 0.0])  # median(5, 1) is 1
    assert state.class_weights(torch.tensor([[[2, 2, 2, 1]]])).tolist() == pytest.approx([0.6, 1.5, 1.0])
    assert state.pixels.tolist() == [5, 2, 3]
    plain = TrainState(None, None, None, None, pixels=torch.zeros(3, dtype=torch.int64))
    assert plain.class_weights(first) is None and plain.pixels.tolist() == [5, 1, 0]


def test_balanced_loss_weighs_a_rare_class_up():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 1  # one pixel of class 1 among 15 of background
    logits = torch.zeros(1, 2, 4, 4)
    logits[:, 0] = 2.0  # background everywhere: right on 15 pixels, wrong on the rare one
    plain = segmentation_loss({"out": logits}, target)
    balanced = segmentation_loss({"out": logits}, target, class_weights=median_frequency_weights(
        torch.bincount(target.flatten())))
    assert balanced > 3 * plain


@pytest.mark.parametrize(("override", "words"), [
    ({"backbone_weights": "IMAGENET1K_V1"}, "no backbone weights"),
    ({"aux_loss": True}, "no auxiliary head"),
    ({"class_balance": 2.0}, "class_balance"),
])
def test_preset_refuses_what_the_unet_has_not_in_one_line(override, words):
    with pytest.raises(ConfigError) as err:
        load_segmenter_preset("world", {"architecture": "unet_small", **override})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_build_refuses_backbone_weights_for_the_unet():
    with pytest.raises(ValueError, match="unet_small is trained from scratch"):
        build_segmenter("unet_small", 3, "IMAGENET1K_V1")
