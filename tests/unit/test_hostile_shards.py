"""Hostile shards (issue 18): the training reader (``training_dataset``, which `eval zs3 --synthetic` uses)
refuses every sample that is not the format with one line naming the shard and the key, or skips and
counts it when asked to; it never trains on it."""

import io
import json
import pickle
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image
from zs3_fixtures import decompression_bomb, make_synthetic

from pipeline.dataset.reader import SkipBadSamples, first_sample, training_dataset
from pipeline.dataset.shards import write_shard
from pipeline.inspect.folder import read_shard
from stages.errors import DataError

SIZE = 64  # zs3_fixtures' images
KEY = "000000000004"  # the second sample of shard 1 (3 samples a shard)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("hostile") / "syn", shards=2, per_shard=3)


@pytest.fixture
def dataset(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "syn")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def shard(out, index=1):
    return out / "data" / f"shard-{index:06d}.tar"


def change_sample(change):
    """A damage: ``change(sample)`` on the second sample of shard 1, its stats kept."""
    def damage(out):
        path = shard(out)
        samples = list(read_shard(path))
        change(samples[1])
        write_shard(path.parent, 1, samples, json.loads((path.parent / f".{path.stem}.stats.json").read_text()))
    return damage


def set_member(member, data):
    return change_sample(lambda s: s.__setitem__(member, data() if callable(data) else data))


def edit_json(**fields):
    def change(sample):
        sample["json"] = json.dumps(dict(json.loads(sample["json"]), **fields)).encode()
    return change_sample(change)


def raw_tar(names):
    """A damage: shard 1 rewritten as a tar holding exactly these (member name, bytes)."""
    def damage(out):
        with tarfile.open(shard(out), "w") as tar:
            for name, data in names:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return damage


def members_of_key_4(out):
    return [(f"{KEY}.{ext}", data) for ext, data in list(read_shard(shard(out)))[1].items() if ext != "__key__"]


def duplicate_member(out):
    names = members_of_key_4(out)
    raw_tar([*names, names[0]])(out)


def copy_shard_0_as_shard_2(out):
    for name in ("shard-{}.tar", ".shard-{}.stats.json"):
        shutil.copy(out / "data" / name.format("000000"), out / "data" / name.format("000002"))


def rename_third_sample_3(out):
    """Keys 3, 4, 3 in shard 1: the same key twice, apart (side by side, webdataset would merge them)."""
    path = shard(out)
    samples = list(read_shard(path))
    samples[2]["__key__"] = "000000000003"
    write_shard(path.parent, 1, samples, json.loads((path.parent / f".{path.stem}.stats.json").read_text()))


def truncate(out):
    data = shard(out).read_bytes()
    shard(out).write_bytes(data[: len(data) // 2])


SAMPLE_DAMAGE = [  # (damage, what the line says after "shard .../shard-000001.tar key 000000000004: ")
    (set_member("seg.png", png(np.full((SIZE, SIZE), 200, np.uint8))), "seg.png holds class ids [200], not 0/255"),
    (set_member("seg.png", png(np.full((SIZE, SIZE), 21, np.uint8))), "seg.png holds class ids [21]"),
    (set_member("seg.png", png(np.full((SIZE, SIZE), 254, np.uint8))), "seg.png holds class ids [254]"),
    (set_member("seg.png", png(np.full((SIZE, SIZE), 7, np.uint8))), "seg.png holds class ids [7]"),  # not its class
    (set_member("seg.png", png(np.zeros((32, 32), np.uint8))), "seg.png is 32x32, the image 64x64"),
    (set_member("seg.png", png(np.zeros((SIZE, SIZE), np.uint16))), "seg.png is a mode I;16 image"),
    (set_member("seg.png", png(np.zeros((SIZE, SIZE, 3), np.uint8))), "seg.png is a mode RGB image"),
    (set_member("seg.png", decompression_bomb()), "seg.png is a decompression bomb"),
    (set_member("seg.png", decompression_bomb(9000)), "seg.png is 9000x9000 pixels, more than the 67108864"),
    (set_member("seg.png", b"not a png"), "seg.png does not decode as an image"),
    (set_member("jpg", decompression_bomb()), "the image is a decompression bomb"),
    (set_member("jpg", b"not a jpeg"), "the image does not decode as an image"),
    (change_sample(lambda s: s.__setitem__("jpg", s["jpg"][: len(s["jpg"]) // 2])), "the image does not decode"),
    (set_member("json", b"[" * 100_000 + b"]" * 100_000), "json is nested too deeply to read"),
    (set_member("json", b"[1, 2]"), "json is a list, not an object"),
    (set_member("json", b"\xff\xfe{"), "json is not valid JSON"),
    (edit_json(class_ids="7"), "json's class_ids and classes are not two lists"),
    (edit_json(class_ids=[7, 8]), "json's class_ids and classes are not two lists"),
    (edit_json(class_ids=[30], classes=["unicorn"]), "json names classes 30 'unicorn' that classes.json does not have"),
    (edit_json(classes=["dog"]), "json names classes 1 'dog' that classes.json does not have"),
    (set_member("pyd", pickle.dumps(1)), "member pyd would run code when loaded (pickle)"),
    (set_member("depth.png", png(np.zeros((SIZE, SIZE), np.uint8))), "members ['depth.png', 'jpg', 'json', 'seg.png']"),
    (change_sample(lambda s: s.pop("seg.png")), "members ['jpg', 'json'], expected an image (jpg or png), json and"),
    (rename_third_sample_3, "the key appears twice"),
]


@pytest.mark.parametrize("damage, message", SAMPLE_DAMAGE)
def test_a_sample_that_is_not_the_format_stops_training_naming_shard_and_key(dataset, damage, message):
    damage(dataset)
    with pytest.raises(DataError) as raised:
        list(training_dataset(dataset))
    line = str(raised.value)
    key = "000000000003" if "appears twice" in message else KEY  # the second 3 is refused
    assert "\n" not in line and f"shard {shard(dataset)} key {key}: {message}" in line, line


SHARD_DAMAGE = [  # (damage, the shard named, what the line says)
    (raw_tar([("../000000000004.jpg", b"x"), ("../000000000004.json", b"{}")]), 1, "are paths (../ or absolute)"),
    (raw_tar([("/tmp/000000000004.jpg", b"x"), ("/tmp/000000000004.json", b"{}")]), 1, "are paths (../ or absolute)"),
    (raw_tar([("sample.jpg", b"x")]), 1, "not <sample index>.<member>"),
    (duplicate_member, 1, f"member {KEY}.jpg appears twice"),
    (copy_shard_0_as_shard_2, 2, "key 000000000000: the key appears twice"),
    (lambda out: shard(out).write_bytes(b""), 1, "cannot be read (empty file)"),
    (truncate, 1, "cannot be read"),
    (raw_tar([]), 1, "holds 0 samples, its stats say 3"),
    (lambda out: raw_tar(members_of_key_4(out))(out), 1, "holds 1 samples, its stats say 3"),
    (lambda out: (out / "classes.json").write_text("{"), 0, "classes.json is damaged (not valid JSON"),
    (lambda out: (out / "classes.json").write_text('{"classes": 3}'), 0, "classes.json is damaged (not a classes"),
]


@pytest.mark.parametrize("damage, index, message", SHARD_DAMAGE)
def test_a_shard_that_is_not_the_format_stops_training_naming_it(dataset, damage, index, message):
    damage(dataset)
    with pytest.raises(DataError) as raised:
        list(training_dataset(dataset))
    line = str(raised.value)
    assert "\n" not in line and message in line and (f"shard-{index:06d}.tar" in line or "classes.json" in line), line


def test_a_loose_shard_without_stats_must_hold_samples(tmp_path):
    loose = tmp_path / "loose.tar"
    with tarfile.open(loose, "w"):
        pass
    for read in (lambda: list(training_dataset(str(loose))), lambda: first_sample(str(loose))):
        with pytest.raises(DataError, match=f"shard {loose} holds no samples"):
            read()


def test_skipping_is_an_explicit_opt_in_that_counts(dataset):
    set_member("seg.png", png(np.full((SIZE, SIZE), 200, np.uint8)))(dataset)
    raw = list(read_shard(shard(dataset, 0)))
    raw[0]["json"] = b"[1]"
    write_shard(dataset / "data", 0, raw, json.loads((dataset / "data" / ".shard-000000.stats.json").read_text()))
    skipped = SkipBadSamples()
    read = [meta["key"] for _, _, meta in training_dataset(dataset, handler=skipped)]
    assert read == ["000000000001", "000000000002", "000000000003", "000000000005"]
    assert skipped.skipped == 2 and "000000000000" in skipped.reasons[0] and KEY in skipped.reasons[1]
    with pytest.raises(DataError, match="key 000000000000: json is a list"):
        list(training_dataset(dataset))  # without the opt-in: refused


def test_first_sample_is_checked_like_the_rest(dataset):
    change_sample(lambda s: None)(dataset)
    image, mask, meta = first_sample(dataset)
    assert image.shape == (3, SIZE, SIZE) and mask.shape == (SIZE, SIZE) and meta["key"] == "000000000000"
    raw = list(read_shard(shard(dataset, 0)))
    raw[0]["seg.png"] = png(np.full((SIZE, SIZE), 99, np.uint8))
    write_shard(dataset / "data", 0, raw, json.loads((dataset / "data" / ".shard-000000.stats.json").read_text()))
    with pytest.raises(DataError, match="key 000000000000: seg.png holds class ids \\[99\\]"):
        first_sample(dataset)


def test_a_handler_that_returns_false_stops_reading_there(dataset):
    set_member("pyd", pickle.dumps(1))(dataset)  # refused by the shard stage
    copy_shard_0_as_shard_2(dataset)  # would be refused later, if reading went on
    refused = []
    read = [meta["key"] for *_, meta in training_dataset(dataset, handler=lambda err: refused.append(err) and False)]
    assert read == ["000000000000", "000000000001", "000000000002", "000000000003"] and len(refused) == 1
