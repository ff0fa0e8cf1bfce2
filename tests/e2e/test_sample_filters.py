"""Phase C's `missing_mask` filter, end to end: a sample whose labels leave a prompted class under the preset's
``min_mask_fraction`` of the image is not written but counted, and every written sample's mask holds each
class its prompt names. The attention labeler on the tiny preset (phase C only: no oracle, no training)."""

import numpy as np
import pytest

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.reader import open_dataset, shard_urls
from pipeline.run.api import make_dataset

MIN_FRACTION = 0.1  # with seed 0, one of the 4 tiny samples has a prompted class under it (bus: 4% of the image)
pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def run(out, min_fraction):
    preset = load_preset("tiny", {"min_mask_fraction": min_fraction, "shard_size": 4, "batch_size": 2})
    config = RunConfig(vocab="voc", out=out, preset_name="tiny", preset=preset, n=4, labeler="attention", seed=0)
    result = make_dataset(config)
    assert result.ok
    return result.summary, {s["__key__"]: s for s in open_dataset(shard_urls(out))}


def share(sample, class_id) -> float:
    return float((sample["seg.png"] == class_id).mean())


def test_samples_missing_a_prompted_class_are_counted_not_written(tmp_path, cache_dir):
    summary, written = run(tmp_path / "strict", MIN_FRACTION)
    assert summary["failed"] == {"missing_mask": 4 - len(written)} and 1 <= len(written) < 4
    for sample in written.values():
        assert all(share(sample, c) >= MIN_FRACTION for c in sample["json"]["class_ids"]), sample["__key__"]
    _, unfiltered = run(tmp_path / "lax", 0.0)  # the same seed: the same images and masks, none filtered
    assert len(unfiltered) == 4
    kept = {k for k, s in unfiltered.items() if all(share(s, c) >= MIN_FRACTION for c in s["json"]["class_ids"])}
    assert set(written) == kept
    for key in kept:
        assert np.array_equal(written[key]["seg.png"], unfiltered[key]["seg.png"])
