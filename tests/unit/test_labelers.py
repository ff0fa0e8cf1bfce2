"""The labeler registry and the consensus of two labelings: what a pixel becomes, and what stays out of a
dataset's fingerprint for each labeler."""

import numpy as np
import pytest

from pipeline.config import ConfigError, RunConfig, load_preset
from stages.label import ClassMask, SampleLabels
from stages.labelers import LABELERS, Request, labeler_class
from stages.labelers.consensus import agreement
from stages.prompts import PromptSpec


def test_every_labeler_is_registered_under_its_name_and_an_unknown_one_is_one_line():
    assert set(LABELERS) == {"grounding", "attention", "consensus"}
    assert all(labeler_class(name).name == name for name in LABELERS)
    with pytest.raises(ValueError, match="unknown labeler 'clip': not one of grounding, attention, consensus"):
        labeler_class("clip")


def test_a_request_names_the_classes_as_the_vocabulary_and_the_prompt_do(voc):
    spec = PromptSpec(0, "a photograph of a potted plant and a dog", ("pottedplant", "dog"), 3)
    request = Request.of(spec, voc)
    assert request == Request(["pottedplant", "dog"], [voc["pottedplant"].id, voc["dog"].id], ["potted plant", "dog"])


def mask(*columns):
    m = np.zeros((2, 4), dtype=bool)
    m[:, list(columns)] = True
    return m


def test_consensus_keeps_agreed_pixels_and_ignores_the_rest():
    grounding = SampleLabels([ClassMask(3, "cat", mask(0, 1), 0.8), ClassMask(5, "dog", mask(2), 0.6)])
    unsure = np.zeros((2, 4), dtype=bool)
    unsure[0, 3] = True  # an attention pixel in its uncertain band: never agreed
    attention = SampleLabels([ClassMask(3, "cat", mask(1), 0.4), ClassMask(5, "dog", mask(2), 0.2)], unsure)
    labels = agreement(grounding, attention, (2, 4))
    seg = labels.segmentation((2, 4))
    np.testing.assert_array_equal(seg, [[255, 3, 5, 255], [255, 3, 5, 0]])  # column 0: cat vs background
    assert [(m.name, m.score) for m in labels.masks] == [("cat", pytest.approx(0.6)), ("dog", pytest.approx(0.4))]
    assert labels.stats == {"agreement": 0.625}  # 5 of 8 pixels


def test_a_class_only_one_labeler_found_is_dropped():
    grounding = SampleLabels([ClassMask(3, "cat", mask(0), 0.8)])
    attention = SampleLabels([], np.zeros((2, 4), dtype=bool))
    labels = agreement(grounding, attention, (2, 4))
    assert labels.masks == [] and labels.stats == {"agreement": 0.75}


def config(labeler: str, **preset) -> RunConfig:
    return RunConfig(vocab="voc", out="x", preset_name="tiny", preset=load_preset("tiny", preset), n=1,
                     labeler=labeler)


@pytest.mark.parametrize(("labeler", "changes", "keeps"), [
    ("grounding", [{"grounding": {"width": 32}}, {"bootstrap_n": 5}], [{"attention": {"threshold": 0.7}}]),
    ("attention", [{"attention": {"threshold": 0.7}}], [{"grounding": {"width": 32}}, {"bootstrap_n": 5},
                                                        {"guidance": {"oracle": 2.0, "label": 7.5}}]),
    ("consensus", [{"attention": {"threshold": 0.7}}, {"grounding": {"width": 32}}, {"bootstrap_n": 5}], []),
])
def test_the_fingerprint_covers_what_changes_the_labelers_labels_only(labeler, changes, keeps):
    base = config(labeler).fingerprint()
    assert all(config(labeler, **change).fingerprint() != base for change in changes)
    assert all(config(labeler, **keep).fingerprint() == base for keep in keeps)
    assert len({config(name).fingerprint() for name in LABELERS}) == len(LABELERS)


def test_an_unknown_labeler_in_a_config_names_the_registered_ones():
    with pytest.raises(ValueError, match="'clip' is not one of grounding, attention, consensus"):
        config("clip")
    assert issubclass(ConfigError, ValueError)
