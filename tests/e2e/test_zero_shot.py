"""Zero-shot (issue 13): an unseen class is never a training target of the grounding module unless the user
asks for it with `datagen train-annotated --train-on-unseen`; then the checkpoint's record, the manifest
of a dataset it labels, the dataset card, Protocol I and the ZS3 report all say the labels are not
zero-shot. Real VOC-layout images where the unseen class sheep is present, the tiny preset, on CPU."""

import contextlib
import io
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
from zs3_fixtures import VOCAB_IDS, make_voc

from pipeline.config import RunConfig, load_preset
from pipeline.dataset.layout import GROUNDING_DIR, RESUME_DIR, TRAINING_RECORD
from pipeline.dataset.voc import read_mask, voc_images
from pipeline.dataset.zero_shot import checkpoint_zero_shot, labels_entry
from pipeline.runtime import Runtime
from pipeline.training.annotated import annotated_batches, load_annotated

SHEEP, PERSON = VOCAB_IDS["sheep"], VOCAB_IDS["person"]  # sheep is unseen in the voc vocabulary
TINY = ["--vocab", "voc", "--models", "tiny", "--seed", "1"]
TRAIN = ["train-annotated", *TINY, "--train-steps", "1", "--val-split", ""]
LABEL = ["label", *TINY, "--n", "4", "--shard-size", "2", "--batch-size", "2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def datagen(*args) -> subprocess.CompletedProcess:
    """``datagen ARGS`` through ``pipeline.cli.main`` in this process (no interpreter start-up)."""
    from pipeline.cli import main

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["datagen", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """16 training images over aeroplane, car, person (seen) and sheep (unseen); one shows only sheep."""
    return make_voc(tmp_path_factory.mktemp("zero-shot") / "VOC2012", n_train=16, n_val=4)


def _with(real, present: set[int]):
    """The first training image whose mask holds exactly the classes ``present``, and its mask."""
    for item in voc_images(real, "train"):
        mask = read_mask(item.mask)
        if set(np.unique(mask).tolist()) - {0, 255} == present:
            return item, mask
    raise AssertionError(f"no image with exactly {present}")


def test_unseen_pixels_are_ignored_and_never_targets_unless_asked(real, voc):
    item, mask = _with(real, {PERSON, SHEEP})
    sample = load_annotated(item, voc, 64)  # the images are 64 px: no resizing
    assert sample["names"] == ["person"] and "sheep" not in sample["prompt"]
    assert sample["targets"].shape == (1, 64, 64) and (sample["targets"][0] == (mask == PERSON)).all()
    assert (sample["ignore"] == ((mask == SHEEP) | (mask == 255))).all()
    assert load_annotated(_with(real, {SHEEP})[0], voc, 64) is None  # nothing to train on

    asked = load_annotated(item, voc, 64, train_on_unseen=True)
    assert asked["names"] == ["person", "sheep"] and "sheep" in asked["prompt"]
    assert (asked["targets"][1] == (mask == SHEEP)).all() and (asked["ignore"] == (mask == 255)).all()
    assert load_annotated(_with(real, {SHEEP})[0], voc, 64, train_on_unseen=True)["names"] == ["sheep"]


def first_epoch(batches, real):
    """The names and ignore masks of one epoch of training batches, with each image's mask by its id."""
    masks = {item.id: read_mask(item.mask) for item in voc_images(real, "train")}
    return [(names, ignore.numpy(), masks[i]) for batch in itertools.islice(batches, 4)  # 16 images, 4 a batch
            for names, ignore, i in zip(batch["names"], batch["ignore"], batch["ids"])]


@pytest.mark.parametrize("train_on_unseen", [False, True])
def test_training_batches_ignore_unseen_pixels_unless_asked(real, voc, train_on_unseen):
    epoch = first_epoch(annotated_batches(voc_images(real, "train"), voc, 64, 1, 4, seed=0,
                                          train_on_unseen=train_on_unseen), real)
    assert any("sheep" in names for names, _, _ in epoch) == train_on_unseen
    for _, ignore, mask in epoch:
        assert (ignore == ((mask == 255) | (mask == SHEEP) & (not train_on_unseen))).all()
    assert len(epoch) == (16 if train_on_unseen else 15)  # the image of sheep alone is skipped, not trained on


@pytest.mark.parametrize("train_on_unseen", [False, True])
def test_train_on_annotated_hands_training_the_choice(real, tmp_path, monkeypatch, cache_dir, train_on_unseen):
    """What ``train_on_annotated`` gives the training loop: its batches, validation batches and record."""
    from pipeline.training import job

    given = {}
    monkeypatch.setattr(job, "run_training", lambda config, runtime, job, batches, validation, *args, zero_shot:
                        given.update(job=job, batches=batches, validation=validation, zero_shot=zero_shot))
    preset = load_preset("tiny", {"train": {"batch_size": 4}})  # first_epoch's
    config = RunConfig(vocab="voc", out=tmp_path / "out", preset_name="tiny", preset=preset, n=1)
    job.train_on_annotated(config, Runtime(config), real, train_on_unseen=train_on_unseen)
    assert given["zero_shot"] is not train_on_unseen and given["job"]["train_on_unseen"] is train_on_unseen
    epoch = first_epoch(given["batches"](0), real)
    assert any("sheep" in names for names, _, _ in epoch) == train_on_unseen
    assert any(SHEEP in mask for _, _, mask in epoch)
    validation = [names for batch in given["validation"]() for names in batch["names"]]
    assert any("sheep" in names for names in validation) == train_on_unseen  # a validation image shows sheep


GROUNDING = {"labeler": "grounding", "trained": True}


def test_a_record_that_does_not_say_is_unknown_and_mixed_labellers_are_not_zero_shot():
    assert checkpoint_zero_shot({"source": "annotated"}) is None and checkpoint_zero_shot(None) is None
    assert checkpoint_zero_shot({"source": "oracle", "zero_shot": True}) is True
    tainted = labels_entry(None, GROUNDING, {"source": "annotated", "zero_shot": False}, has_shards=False)
    assert tainted["zero_shot"] is False
    clean = {"source": "oracle", "zero_shot": True}
    assert labels_entry(tainted, GROUNDING, clean, has_shards=True)["zero_shot"] is False  # its shards remain
    assert labels_entry(tainted, GROUNDING, clean, has_shards=False) == GROUNDING | {"zero_shot": True,
                                                                                     "grounding": [clean]}


def test_a_labeler_that_trains_nothing_is_zero_shot_whatever_the_checkpoint():
    attention = {"labeler": "attention", "trained": False, "details": {"settings": {"threshold": 0.6}}}
    entry = labels_entry(None, attention, {"source": "annotated", "zero_shot": False}, has_shards=True)
    assert entry == attention | {"zero_shot": True}


@pytest.fixture(scope="module")
def default_run(real, tmp_path_factory, cache_dir):
    """train-annotated without the flag, then `datagen label` with its checkpoint."""
    out = tmp_path_factory.mktemp("default") / "out"
    trained = datagen(*TRAIN, "--data", real, "--out", out)
    assert trained.returncode == 0, trained.stderr
    labelled = datagen(*LABEL, "--out", out)
    assert labelled.returncode == 0, labelled.stderr
    return out, trained


def test_by_default_the_checkpoint_and_its_dataset_are_zero_shot(default_run):
    out, trained = default_run
    record = json.loads((out / GROUNDING_DIR / TRAINING_RECORD).read_text())
    assert record["zero_shot"] is True and record["train_on_unseen"] is False
    assert json.loads(trained.stdout.strip().splitlines()[-1])["zero_shot"] is True
    assert "NOT zero-shot" not in trained.stderr
    labels = json.loads((out / "manifest.json").read_text())["labels"]
    assert labels["zero_shot"] is True and labels["grounding"][0]["source"] == "annotated"
    card = (out / "README.md").read_text()
    assert "| zero-shot labels | yes" in card and "NOT zero-shot" not in card


def test_training_on_unseen_is_stated_by_checkpoint_manifest_card_protocol1_and_zs3(real, default_run, tmp_path):
    out = tmp_path / "out"
    # a resumable checkpoint of the default job (same flags otherwise) must not be continued with the flag
    default = json.loads((default_run[0] / GROUNDING_DIR / TRAINING_RECORD).read_text())
    job = {k: default[k] for k in ("fingerprint", "source", "root", "split", "images", "val_split", "train_on_unseen")}
    (out / RESUME_DIR).mkdir(parents=True)
    (out / RESUME_DIR / "progress.json").write_text(json.dumps({"step": 1, "job": job}))

    trained = datagen(*TRAIN, "--data", real, "--out", out, "--train-on-unseen")
    assert trained.returncode == 0, trained.stderr
    record = json.loads((out / GROUNDING_DIR / TRAINING_RECORD).read_text())
    assert record["zero_shot"] is False and record["train_on_unseen"] is True and record["resumed_at"] == 0
    assert "NOT zero-shot" in trained.stderr

    labelled = datagen(*LABEL, "--out", out)
    assert labelled.returncode == 0, labelled.stderr
    assert "NOT zero-shot" in labelled.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"]["zero_shot"] is False
    assert manifest["labels"]["grounding"][0]["train_on_unseen"] is True
    card = (out / "README.md").read_text()
    assert "| zero-shot labels | **no**" in card and "NOT zero-shot" in card and "--train-on-unseen" in card

    protocol1 = datagen("eval", "grounding", *TINY, "--n", "2", "--batch-size", "2", "--out", out)
    assert protocol1.returncode == 0, protocol1.stderr
    report = json.loads((out / "eval" / "protocol1.json").read_text())
    assert report["zero_shot"] is False and "NOT zero-shot" in report["zero_shot_note"]
    assert "NOT zero-shot" in protocol1.stderr  # the table says it too

    zs3 = datagen("eval", "zs3", "--vocab", "voc", "--real", real, "--synthetic", out, "--segmenter", "tiny",
                  "--steps", "2", "--device", "cpu", "--out", tmp_path / "zs3")
    assert zs3.returncode == 0, zs3.stderr
    report = json.loads((tmp_path / "zs3" / "report.json").read_text())
    assert report["zero_shot"] is False and "NOT zero-shot" in report["zero_shot_note"]
    assert report["data"]["synthetic_labels_zero_shot"] == {str(out.resolve()): False}
    assert "NOT zero-shot" in (tmp_path / "zs3" / "report.txt").read_text()
    assert json.loads(zs3.stdout.strip().splitlines()[-1])["zero_shot"] is False
