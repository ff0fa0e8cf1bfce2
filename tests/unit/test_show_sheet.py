"""`datagen show`'s drawing: a palette that keeps 80+ classes apart, each image beside its mask in those
colours, and text wrapped to the sheet rather than cut."""

import numpy as np
from PIL import ImageFont

from pipeline.inspect.show import TILE, class_colour, pair, wrap_text


def cie_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (N, 3) uint8 -> CIELAB (D65), where a distance of about 2.3 is just noticeable."""
    c = rgb / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=-1)


def test_81_classes_background_and_ignore_get_colours_far_apart():
    """COCO's 80 classes (and one more), background and ignore: every pair at least 10 CIELAB units apart
    (the PASCAL VOC colour map had pairs 2.6 apart among 81)."""
    colours = np.array([class_colour(i) for i in (*range(1, 82), 0, 255)], dtype=np.float64)
    lab = cie_lab(colours)
    distance = np.sqrt(((lab[:, None] - lab[None]) ** 2).sum(-1)) + np.eye(len(lab)) * 1e9
    assert distance.min() > 10
    assert class_colour(0) == (0, 0, 0) and class_colour(255) == (255, 255, 255)


def test_each_image_is_drawn_beside_its_mask_in_the_class_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :32], mask[40:, 40:], mask[:8, 56:] = 7, 80, 255
    drawn = pair(image, mask).permute(1, 2, 0).numpy()
    assert drawn.shape == (TILE, 2 * TILE + 2, 3)
    right = drawn[:, TILE + 2:]
    for value, (y, x) in ((7, (10, 10)), (80, (50, 50)), (255, (2, 60)), (0, (50, 10))):  # in mask pixels
        assert tuple(right[int((y + 0.5) * TILE / 64), int((x + 0.5) * TILE / 64)]) == class_colour(value), value
    assert (drawn[:, TILE:TILE + 2] == 255).all()  # the white gap between the two
    assert abs(drawn[:, :TILE].astype(float).mean() - image.mean()) < 2  # the left panel is the image


def test_a_title_is_wrapped_to_the_sheet_not_cut():
    font = ImageFont.load_default(size=12)
    title = "runs/demo: 1 sample with pottedplant pixels, drawn at random (seed 3), preset tiny; each image beside"
    lines = wrap_text(title, font, 200)
    assert len(lines) > 1 and " ".join(lines) == title
    assert all(font.getlength(line) <= 200 for line in lines)
