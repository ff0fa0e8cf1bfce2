"""`datagen show`, `validate`, `stats`, the dataset card and shard sizing, on good and broken datasets."""

import contextlib
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset.manifest import record_shards
from pipeline.dataset.shards import encode_mask, finished_shards, write_shard
from pipeline.dataset.sizing import samples_per_shard
from pipeline.dataset.tally import MASK_COUNTS, Tally
from pipeline.inspect.folder import open_output, read_shard
from pipeline.inspect.show import legend_entries, pick_samples
from stages.errors import DataError


def rewrite_sample(out, shard_index, change):
    """Rewrite one shard with ``change(sample)`` applied to its second sample, as a writer that wrote it so
    would: its stats kept, but the pixel and size counts, the digest and the manifest's digest of what it holds."""
    shard = finished_shards(out / "data")[shard_index]
    samples = list(read_shard(shard))
    change(samples[1])
    tally = Tally(masks=True)
    for sample in samples:
        with contextlib.suppress(DataError, KeyError):
            tally.add_sample(sample, "jpg")
    stats = json.loads((shard.parent / f".{shard.stem}.stats.json").read_text())
    write_shard(shard.parent, shard_index, samples, stats | {k: tally.counts()[k] for k in MASK_COUNTS})
    record_shards(out)
    return shard.name, samples[1]["__key__"]


def test_show_writes_a_contact_sheet_and_prints_only_its_path(datagen, tiny_dataset, tmp_path):
    result = datagen("show", str(tiny_dataset), "--n", "5", "--save", str(tmp_path / "sheet.png"))
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "sheet.png")
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.mode == "RGB" and sheet.width >= 3 * 2 * 160 and sheet.height > 2 * 160  # 3 x 2 image | mask pairs


def test_show_class_filter_and_legend(tiny_dataset):
    ds = open_output(tiny_dataset)
    cow = next(cid for cid, name in ds.names.items() if name == "cow")
    with_cow = [s["__key__"] for p in ds.shards for s in read_shard(p)
                if (np.array(Image.open(io.BytesIO(s["seg.png"]))) == cow).any()]
    picked = pick_samples(ds, 16, "cow")  # samples whose mask labels cow pixels, not those whose prompt names it
    assert with_cow and [s["key"] for s in picked] == with_cow
    legend = legend_entries(ds, picked)
    assert (cow, f"{cow} cow (seen)") in legend and legend[-2:] == [(0, "0 background"), (255, "255 ignore")]


def test_show_random_draws_the_same_samples_for_the_same_seed(tiny_dataset, datagen, tmp_path):
    ds = open_output(tiny_dataset)
    keys = [s["__key__"] for p in ds.shards for s in read_shard(p)]
    drawn = {seed: [s["key"] for s in pick_samples(ds, 5, None, seed)] for seed in (1, 2)}
    assert drawn[1] == [s["key"] for s in pick_samples(ds, 5, None, 1)] and drawn[1] != drawn[2]
    assert drawn[1] == sorted(drawn[1]) and set(drawn[1]) <= set(keys) and drawn[1] != keys[:5]
    assert [s["key"] for s in pick_samples(ds, 99, None, 1)] == keys  # asking for more than there are: all
    cow = next(cid for cid, name in ds.names.items() if name == "cow")
    for s in pick_samples(ds, 2, "cow", seed=4):
        assert (s["mask"] == cow).any()
    sheets = [tmp_path / f"{i}.png" for i in range(3)]
    for sheet, seed in zip(sheets, ("1", "1", "2"), strict=True):
        result = datagen("show", str(tiny_dataset), "--n", "3", "--random", "--seed", seed, "--save", str(sheet))
        assert result.returncode == 0
    assert sheets[0].read_bytes() == sheets[1].read_bytes() != sheets[2].read_bytes()


def test_validate_accepts_the_dataset(datagen, tiny_dataset):
    result = datagen("validate", str(tiny_dataset))
    assert result.returncode == 0 and "valid" in result.stderr and not result.stdout


def test_stats_json_agrees_with_the_shards(datagen, tiny_dataset):
    result = datagen("stats", str(tiny_dataset), "--json")
    stats = json.loads(result.stdout)
    shard_stats = [json.loads(p.read_text()) for p in sorted((tiny_dataset / "data").glob("*.stats.json"))]
    written = sum(s["written"] for s in shard_stats)
    assert stats["samples"]["written"] == written and stats["shards"]["count"] == 4
    assert stats["image_sizes"] == {"64x64": written} and stats["mask_sizes"] == {"64x64": written}
    masks = [np.array(Image.open(io.BytesIO(s["seg.png"]))) for p in finished_shards(tiny_dataset / "data")
             for s in read_shard(p)]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256)
    for c in stats["classes"]:
        assert c["pixel_share"] == pytest.approx(counts[c["id"]] / counts.sum(), abs=1e-6)
    assert stats["background_pixel_share"] == pytest.approx(counts[0] / counts.sum(), abs=1e-6)
    assert stats["ignore_pixel_share"] == pytest.approx(counts[255] / counts.sum(), abs=1e-6)
    assert stats["splits"]["seen"]["classes"] == 15 and stats["splits"]["unseen"]["classes"] == 5
    table = datagen("stats", str(tiny_dataset))
    assert table.returncode == 0 and "seen vs unseen" in table.stdout and "pottedplant" in table.stdout


def test_dataset_card_pins_what_made_the_data(tiny_dataset):
    card = (tiny_dataset / "README.md").read_text()
    manifest = json.loads((tiny_dataset / "manifest.json").read_text())
    assert manifest["model_revisions"]["stable_diffusion"]["sha256"] in card
    assert manifest["model_revisions"]["oracle"]["sha256"] in card
    assert manifest["model_revisions"]["oracle"]["backend"] == "torchvision"
    assert "| Mask R-CNN oracle | `torchvision`, weights `" in card
    assert manifest["code"]["datagen"] == "0.1.0" and "git_commit" in manifest["code"]
    assert "| seed | 3 |" in card and "| 16 | pottedplant | unseen |" in card and "noise" in card
    assert "read_webdataset" in card and "load_dataset(os.path.abspath" in card and "index.wids.json" in card


def _newer_format(out):
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(dict(manifest, format_version=99)))


def _truncate(out):
    shard = finished_shards(out / "data")[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 3 // 5])  # ends inside a later sample


@pytest.mark.parametrize("damage, message", [
    (lambda out: shutil.rmtree(out), "no such folder"),
    (lambda out: (out / "manifest.json").unlink(), "not a datagen dataset"),
    (lambda out: (out / "manifest.json").write_text("{"), "not valid JSON"),
    (_newer_format, "format 99"),
    (_truncate, {"show": "shard-000001.tar is truncated or corrupt (at key 00000000000",
                 "stats": " bytes, its stats say "}),  # exactly: test_stats_names_a_shard_not_the_size_written
])
@pytest.mark.parametrize("command", ["show", "stats"])
def test_bad_input_gets_one_line_and_exit_2(datagen, copy, damage, message, command):
    damage(copy)
    result = datagen(command, str(copy))
    message = message[command] if isinstance(message, dict) else message
    assert result.returncode == 2 and message in result.one_line() and not result.stdout


@pytest.mark.parametrize("damage, message", [
    (lambda out: shutil.rmtree(out), "no such folder"),
    (lambda out: (out / "manifest.json").unlink(), "not a datagen dataset"),
    (_newer_format, "format 99"),
])
def test_validate_refuses_what_is_not_a_readable_dataset(datagen, copy, damage, message):
    damage(copy)
    result = datagen("validate", str(copy))
    assert result.returncode == 2 and message in result.one_line()


def test_stats_names_a_shard_not_the_size_written(datagen, copy):
    """stats reads no shard, yet a truncated one is named: its size is not the bytes its stats recorded."""
    written = finished_shards(copy / "data")[1].stat().st_size
    _truncate(copy)
    result = datagen("stats", str(copy))
    assert result.returncode == 2 and not result.stdout
    assert f"data/shard-000001.tar is {written * 3 // 5} bytes, its stats say {written} were written: truncated or " \
           "replaced since; run `datagen validate`" in result.one_line()


def _resize_mask(sample):
    sample["seg.png"] = encode_mask(np.zeros((32, 32), np.uint8))


def _foreign_class(sample):
    meta = json.loads(sample["json"])
    sample["json"] = json.dumps(dict(meta, class_ids=[*meta["class_ids"], 77])).encode()


def _broken_rle(sample):
    meta = json.loads(sample["json"])
    meta["instances"][0]["segmentation"]["counts"] = "!!"
    sample["json"] = json.dumps(meta).encode()


def _instance_without_class(sample):
    meta = json.loads(sample["json"])
    meta["instances"].append({"area": 0})
    sample["json"] = json.dumps(meta).encode()


def _json_not_an_object(sample):
    sample["json"] = b"[1, 2]"


def _pickle_member(sample):
    sample["pyd"] = b"\x80\x04N."


def _zeroed_jpeg_bytes(sample):
    """400 bytes zeroed in the middle of the JPEG: Pillow decodes it (into garbage) without an error."""
    data = bytearray(sample["jpg"])
    middle = len(data) // 2
    data[middle:middle + 400] = bytes(400)
    sample["jpg"] = bytes(data)
    Image.open(io.BytesIO(sample["jpg"])).load()


@pytest.mark.parametrize("change, message", [
    (_resize_mask, "mask is 32x32 (or not one channel), image 64x64"),
    (_foreign_class, "class ids [77] are not in the vocabulary"),
    (_broken_rle, "RLE"),
    (_pickle_member, "would run code when loaded (pickle)"),
    (_instance_without_class, "an instance has no class_id or name"),
    (_zeroed_jpeg_bytes, "image does not decode as an image (Corrupt JPEG data"),
])
def test_validate_names_the_shard_and_key_of_each_problem(datagen, copy, change, message):
    shard, key = rewrite_sample(copy, 2, change)
    result = datagen("validate", str(copy))
    assert result.returncode == 1 and "invalid: 1 problems" in result.stderr
    assert result.stdout.strip().startswith(f"data/{shard} key {key}: ") and message in result.stdout


def test_validate_reports_truncation_missing_shards_and_stats_that_disagree(datagen, copy):
    _truncate(copy)
    stats_path = copy / "data" / ".shard-000002.stats.json"
    stats_path.write_text(json.dumps(dict(json.loads(stats_path.read_text()), written=1)))
    (copy / "data" / ".shard-000003.stats.json").unlink()
    result = datagen("validate", str(copy))
    assert result.returncode == 1
    assert "data/shard-000001.tar key 00000000000" in result.stdout
    assert "truncated or corrupt tar at this key" in result.stdout
    assert "data/shard-000002.tar key 000000000011: holds 4 samples, its stats say 1" in result.stdout
    assert "data/shard-000003.tar: planned shard is missing or unfinished" in result.stdout


def test_validate_reports_a_json_member_that_is_not_an_object(datagen, copy):
    shard, key = rewrite_sample(copy, 2, _json_not_an_object)
    result = datagen("validate", str(copy))
    assert result.returncode == 1 and f"data/{shard} key {key}: json is a list, not an object" in result.stdout


def test_each_shard_sha256_is_recorded_at_write_and_a_flipped_byte_fails_validate(datagen, copy):
    shards = finished_shards(copy / "data")
    recorded = json.loads((copy / "manifest.json").read_text())["shards"]
    for shard in shards:
        digest = hashlib.sha256(shard.read_bytes()).hexdigest()
        stats = json.loads((shard.parent / f".{shard.stem}.stats.json").read_text())
        assert stats["sha256"] == digest == recorded[f"data/{shard.name}"] and stats["bytes"] == shard.stat().st_size
    data = bytearray(shards[1].read_bytes())
    at = data.index(b"a photograph of")  # a letter of a prompt: every member still decodes and checks out
    data[at] ^= 0x20
    shards[1].write_bytes(bytes(data))
    result = datagen("validate", str(copy))
    assert result.returncode == 1 and "invalid: 2 problems" in result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("data/shard-000001.tar: sha256 ") for line in lines)
    assert "its stats recorded when it was written" in lines[0] and "the manifest recorded" in lines[1]


def test_stats_reads_the_sidecars_not_the_shards(datagen, copy):
    """Each shard replaced by as many zero bytes: stats says the same (nothing but sizes comes from a
    shard); validate reads them."""
    before = json.loads(datagen("stats", str(copy), "--json").stdout)
    for shard in finished_shards(copy / "data"):
        shard.write_bytes(bytes(shard.stat().st_size))
    after = datagen("stats", str(copy), "--json")
    assert after.returncode == 0 and json.loads(after.stdout) == before
    assert datagen("validate", str(copy)).returncode == 1


def test_stats_recounts_a_shard_whose_stats_predate_the_pixel_counts(datagen, copy):
    before = json.loads(datagen("stats", str(copy), "--json").stdout)
    assert before["ignore_pixel_share"] == 0 and 0 < before["background_pixel_share"] < 1
    for path in (copy / "data").glob("*.stats.json"):
        stats = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in stats.items() if k not in (*MASK_COUNTS, "sha256", "bytes")}))
    assert json.loads(datagen("stats", str(copy), "--json").stdout) == before
    assert datagen("validate", str(copy)).returncode == 0  # such stats are valid: the manifest's digests hold


def test_stats_without_counts_are_named_not_a_traceback(datagen, copy):
    stats_path = copy / "data" / ".shard-000002.stats.json"
    stats = json.loads(stats_path.read_text())
    del stats["written"]
    stats_path.write_text(json.dumps(stats))
    result = datagen("stats", str(copy))
    assert result.returncode == 2 and ".shard-000002.stats.json has no written count" in result.one_line()
    result = datagen("validate", str(copy))
    assert result.returncode == 1 and "data/shard-000002.tar: its stats are damaged (counts missing or not integers)" \
        in result.stdout  # and `run` redoes that shard


def test_shard_mb_run_records_its_shard_size_and_writes_shards_near_the_target(datagen, tmp_path):
    """A --shard-mb run: the resolved samples per shard is in the manifest (so resuming keeps it) and
    every full shard is within 1.5x of the target (the estimate runs low on the tiny preset's noise images)."""
    out, target_mb = tmp_path / "sized", 0.03
    result = datagen("run", "--vocab", "voc", "--n", "8", "--models", "tiny", "--bootstrap-n", "2", "--train-steps",
                     "1", "--batch-size", "2", "--shard-mb", str(target_mb), "--out", str(out))
    assert result.returncode == 0, result.stderr
    size = json.loads((out / "manifest.json").read_text())["config"]["preset"]["shard_size"]
    stats = [json.loads(p.read_text()) for p in sorted((out / "data").glob("*.stats.json"))]
    assert size > 1 and all(s["end"] - s["start"] == size for s in stats[:-1]) and stats[-1]["end"] == 8
    for shard in finished_shards(out / "data")[:-1]:
        assert target_mb / 1.5 <= shard.stat().st_size / 1e6 <= target_mb * 1.5, shard
    assert samples_per_shard(0.001, 512, "jpg") == 1
    assert samples_per_shard(500, 512, "jpg") > samples_per_shard(500, 512, "png")
    result = datagen("run", "--models", "tiny", "--shard-size", "4", "--shard-mb", "10", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "not both" in result.one_line() and not (tmp_path / "x").exists()


def test_rerun_of_a_finished_dataset_restores_a_missing_card_and_index(datagen, copy):
    """A driver killed after the last shard but before the card: the rerun has nothing to compute but
    writes the card and the wids index."""
    card, index = (copy / "README.md").read_text(), json.loads((copy / "data" / ".index.wids.json").read_text())
    (copy / "README.md").unlink()
    (copy / "data" / ".index.wids.json").unlink()
    result = datagen("run", "--vocab", "voc", "--n", "16", "--models", "tiny", "--bootstrap-n", "4", "--train-steps",
                     "3", "--shard-size", "4", "--batch-size", "2", "--seed", "3", "--out", str(copy))
    assert result.returncode == 0 and "nothing to do" in result.stderr
    assert (copy / "README.md").read_text().replace("copy", "tiny") == card.replace("copy", "tiny")
    assert json.loads((copy / "data" / ".index.wids.json").read_text())["shardlist"] == index["shardlist"]


def change_stats(folder, shard_index, **fields):
    """A damage: fields of one shard's stats replaced (or, for a callable, computed from the stats)."""
    def damage(out):
        shard = finished_shards(out / folder)[shard_index]
        path = shard.parent / f".{shard.stem}.stats.json"
        stats = json.loads(path.read_text())
        path.write_text(json.dumps(stats | {k: v(stats) if callable(v) else v for k, v in fields.items()}))
    return damage


def rewrite_shard(folder, shard_index, change, names_key=True):
    """A damage: one shard's samples and stats rewritten by ``change(samples, stats)``; returns where validate
    names its first sample (``names_key``: the problem is that sample's), else None."""
    def damage(out):
        shard = finished_shards(out / folder)[shard_index]
        samples, stats = list(read_shard(shard)), json.loads((shard.parent / f".{shard.stem}.stats.json").read_text())
        change(samples, stats)
        write_shard(shard.parent, shard_index, samples, stats)
        return f"{folder}/{shard.name} key {samples[0]['__key__']}: " if names_key else None
    return damage


def _repeat_first_sample(samples, stats):
    samples.append(dict(samples[0]))  # not next to its first copy (the shard holds 4): a sample of its own
    stats["written"] += 1


def _fail_a_written_key(samples, stats):
    stats["failures"].append({"key": samples[0]["__key__"], "reason": "missing_mask"})


def _erase_an_instance_from_the_mask(samples, stats):
    meta = json.loads(samples[0]["json"])
    seg = np.array(Image.open(io.BytesIO(samples[0]["seg.png"])))
    seg[seg == meta["instances"][0]["class_id"]] = 0  # still a valid mask: its RLE and area are unchanged
    samples[0]["seg.png"] = encode_mask(seg)


def _latent(value):
    def change(samples, stats):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=True)
        samples[0]["latent.npy"] = buf.getvalue()
    return change


def _flip_a_class_split(out):
    classes = json.loads((out / "classes.json").read_text())
    classes["classes"][0]["seen"] = not classes["classes"][0]["seen"]  # well formed, but not the manifest's
    (out / "classes.json").write_text(json.dumps(classes))


@pytest.mark.parametrize("damage, message", [
    (change_stats("data", 1, fingerprint="0" * 16),
     "data/shard-000001.tar: stats were written by another config than the manifest's"),
    (change_stats("data", 1, start=5, end=9), "data/shard-000001.tar: holds samples 5..9, not what the manifest's "
                                              "config plans for it"),
    (change_stats("data", 1, class_instances=lambda s: {**s["class_instances"], "cow": 99}),
     "data/shard-000001.tar: per-class instance counts or pixel areas disagree with its stats"),
    (change_stats("data", 1, class_pixels=lambda s: {k: v + 1 for k, v in s["class_pixels"].items()}),
     "data/shard-000001.tar: per-class instance counts or pixel areas disagree with its stats"),
    (rewrite_shard("data", 1, _repeat_first_sample, names_key=False), "data/shard-000001.tar: a key appears twice"),
    (rewrite_shard("data", 1, _fail_a_written_key, names_key=False),
     "data/shard-000001.tar: a key appears twice, or both written and failed"),
    (rewrite_shard("data", 1, _erase_an_instance_from_the_mask), "RLE disagrees with seg.png's pixels of class"),
    (_flip_a_class_split, "classes.json: classes disagree with the manifest's vocabulary"),
    (rewrite_shard("oracle", 0, _latent(np.zeros((4, 16, 16)))), "latent.npy is float64 (4, 16, 16), not float32"),
    (rewrite_shard("oracle", 0, _latent(np.zeros((16, 16), np.float32))),
     "latent.npy is float32 (16, 16), not float32"),
    (rewrite_shard("oracle", 0, _latent(np.array([{}], object))), "latent.npy does not load without pickle"),
], ids=["fingerprint", "range", "instances", "pixels", "repeated-key", "written-and-failed", "rle-vs-seg",
        "classes-json", "latent-dtype", "latent-shape", "latent-pickle"])
def test_validate_reports_what_disagrees_with_the_plan_stats_or_manifest(datagen, copy, damage, message):
    where = damage(copy) or ""
    result = datagen("validate", str(copy))
    lines = result.stdout.splitlines()
    assert result.returncode == 1 and any(line.startswith(where) and message in line for line in lines), lines
