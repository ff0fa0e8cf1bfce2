"""Hostile input through the commands (issue 18), in process: a damaged dataset, output folder or preset
ends in one line and exit 2 (validate: exit 1 naming shard and key), or a repair; nothing finished is
lost. The reader-, config- and fault-level tables are in tests/unit/test_hostile_*.py."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from zs3_fixtures import decompression_bomb

from pipeline.config import CONFIG_DIR
from pipeline.dataset.shards import finished_shards, write_shard
from pipeline.inspect.folder import read_shard

RUN = ["run", "--vocab", "voc", "--n", "16", "--models", "tiny", "--bootstrap-n", "4", "--train-steps", "3",
       "--shard-size", "4", "--batch-size", "2", "--seed", "3"]  # the tiny_dataset fixture's command


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def member(name, data):
    """A damage: member ``name`` of the second sample of shard 2 replaced; returns that shard and key."""
    def damage(out):
        shard = finished_shards(out / "data")[2]
        samples = list(read_shard(shard))
        samples[1][name] = data
        write_shard(shard.parent, 2, samples, json.loads((shard.parent / f".{shard.stem}.stats.json").read_text()))
        return shard.name, samples[1]["__key__"]
    return damage


SHARD_DAMAGE = [  # (damage, what validate says, what show says (exit 2))
    (member("seg.png", png(np.zeros((64, 64), np.uint16))), "seg.png is a mode I;16 image", None),
    (member("seg.png", png(np.zeros((64, 64, 3), np.uint8))), "seg.png is a mode RGB image", None),
    (member("seg.png", png(np.full((64, 64), 200, np.uint8))), "mask holds class ids [200]",
     "seg.png holds class ids [200], not 0/255 or in the vocabulary"),
    (member("seg.png", decompression_bomb()), "seg.png is a decompression bomb", None),
    (member("jpg", decompression_bomb()), "image is a decompression bomb", "the image is a decompression bomb"),
    (member("jpg", b"not a jpeg"), "image does not decode as an image", "the image does not decode"),
    (member("json", b"[" * 100_000 + b"]" * 100_000), "json is nested too deeply to read", None),
    (member("json", b"\xff\xfe"), "json is not valid JSON", None),
]


@pytest.mark.parametrize("damage, validate_says, show_says", SHARD_DAMAGE)
def test_damaged_samples_are_one_line_naming_shard_and_key(datagen, copy, tmp_path, damage, validate_says, show_says):
    shard, key = damage(copy)
    result = datagen("validate", copy)
    assert result.returncode == 1 and f"data/{shard} key {key}: {validate_says}" in result.stdout, result.stdout
    result = datagen("show", copy, "--save", tmp_path / "sheet.png")
    line = result.one_line()
    assert result.returncode == 2 and f"{shard} key {key}: {show_says or validate_says}" in line, line
    assert not (tmp_path / "sheet.png").exists()
    assert datagen("stats", copy).returncode == 0  # stats reads the shards' stats, no shard: validate checks them


def manifest_change(**fields):
    def damage(out):
        manifest = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").write_text(json.dumps(dict(manifest, **fields)))
    return damage


@pytest.mark.parametrize("damage", [lambda out: (out / "manifest.json").write_text("[1]"),
                                    manifest_change(vocabulary="voc"), manifest_change(config=[1])])
def test_a_damaged_manifest_is_refused_alike_by_every_command(datagen, copy, damage):
    damage(copy)
    before = modified(copy)
    for command in (RUN, ["validate"], ["show"], ["stats"]):
        result = datagen(*command, *(["--out", copy] if command is RUN else [copy]))
        line = result.one_line()
        assert result.returncode == 2 and "manifest.json" in line and "damaged" in line, command
    assert modified(copy) == before  # nothing touched


def modified(out) -> dict:
    """Each file and folder under ``out`` by its path there (data/ and oracle/ hold shards of the same names)
    with its modification time."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")}


@pytest.mark.parametrize("text", ["{", "[]", '{"classes": [1, 2]}'])
def test_run_rewrites_the_damaged_classes_file_that_validate_tells_it_to(datagen, copy, text, cache_dir):
    (copy / "classes.json").write_text(text)
    told = datagen("validate", copy)
    assert told.returncode == 2 and "rewrite it by rerunning the run command" in told.one_line()
    result = datagen(*RUN, "--out", copy)
    assert result.returncode == 0 and "rewrote" in result.stderr and "classes.json" in result.stderr
    assert datagen("validate", copy).returncode == 0
    assert list((cache_dir / "locks").iterdir()) == []  # the lock file went with the lock


def test_damaged_stats_are_named_and_run_redoes_that_shard_to_the_same_bytes(datagen, copy):
    stats = copy / "data" / ".shard-000001.stats.json"
    tar = (copy / "data" / "shard-000001.tar").read_bytes()
    stats.write_text(json.dumps(dict(json.loads(stats.read_text()), written="4")))
    result = datagen("validate", copy)
    assert result.returncode == 1 and "data/shard-000001.tar: its stats are damaged" in result.stdout
    assert datagen("stats", copy).returncode == 2
    result = datagen(*RUN, "--out", copy)
    assert result.returncode == 0, result.stderr
    assert json.loads(stats.read_text())["written"] == 4 and (copy / "data" / "shard-000001.tar").read_bytes() == tar
    assert datagen("validate", copy).returncode == 0


def test_a_damaged_training_record_stops_run_with_one_line(datagen, copy):
    (copy / "grounding" / "training.json").write_text("[]")
    result = datagen(*RUN, "--out", copy)
    assert result.returncode == 2 and "grounding/training.json is damaged" in result.one_line()
    assert (copy / "grounding" / "model.safetensors").is_file()


def preset_file(tmp_path, **changes):
    lines = [line for line in (CONFIG_DIR / "presets" / "tiny.yaml").read_text().splitlines()
             if line.split(":")[0] not in changes]
    path = tmp_path / "preset.yaml"
    path.write_text("\n".join([*lines, *(f"{k}: {v}" for k, v in changes.items())]) + "\n")
    return path


@pytest.mark.parametrize("changes, message", [
    ({"capture_step": 99}, "capture_step 99 is beyond the 10 steps"),
    ({"guidance": ".nan"}, "guidance.oracle: Input should be a finite number"),
    ({"guidance": ".inf"}, "guidance.oracle: Input should be a finite number"),
    ({"image_size": 7}, "image_size 7 is not a multiple of 16"),  # known once the models are loaded
])
def test_a_preset_that_cannot_run_is_refused_before_the_output_folder_is_claimed(datagen, tmp_path, changes,
                                                                               message):
    out = tmp_path / "out"
    result = datagen(*RUN, "--models", preset_file(tmp_path, **changes), "--out", out)
    assert result.returncode == 2 and message in result.one_line() and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--out", "/proc/datagen/out"], "--out /proc/datagen/out: cannot write in /proc"),
    (["--out", "foo://bucket/out"], "--out: foo://bucket/out: foo:// is not an object store"),
    (["--out", "s3://"], "--out: s3://: no bucket (s3://BUCKET/PREFIX)"),
    (["--out", "gs://bucket/out"], "--out: gs://bucket/out: gs:// needs a package that is not installed"),  # gcsfs
    (["--vocab", "VOCAB"], "vocabulary VOCAB holds a list, not a mapping"),
    (["--models", "VOCAB"], "model preset VOCAB holds a list, not a mapping"),
    (["--labeler", "clip"], "--labeler: 'clip' is not one of grounding, attention, consensus"),
])
def test_run_refuses_what_it_cannot_use_with_one_line(datagen, tmp_path, args, message):
    vocab = tmp_path / "list.yaml"
    vocab.write_text("- dog\n- cat\n")
    args = [str(vocab) if a == "VOCAB" else a for a in args]
    result = datagen(*RUN, "--out", tmp_path / "out", *args)
    assert result.returncode == 2 and message.replace("VOCAB", str(vocab)) in result.one_line()
    assert not (tmp_path / "out").exists()
    result = datagen("prompts", "--vocab", vocab)
    assert result.returncode == 2 and "holds a list" in result.one_line()
