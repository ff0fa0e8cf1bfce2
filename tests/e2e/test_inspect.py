"""`datagen show`, `validate`, `stats`, the dataset card and shard sizing, on good and broken datasets."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset.shards import encode_mask, finished_shards, write_shard
from pipeline.dataset.sizing import samples_per_shard
from pipeline.inspect.folder import open_output, read_shard
from pipeline.inspect.show import class_colour, pick_samples


def rewrite_sample(out, shard_index, change):
    """Rewrite one shard with ``change(sample)`` applied to its second sample; its stats are kept."""
    shard = finished_shards(out / "data")[shard_index]
    samples = list(read_shard(shard))
    change(samples[1])
    stats = json.loads((shard.parent / f".{shard.stem}.stats.json").read_text())
    write_shard(shard.parent, shard_index, samples, stats)
    return shard.name, samples[1]["__key__"]


def test_show_writes_a_contact_sheet_and_prints_only_its_path(datagen, tiny_dataset, tmp_path):
    result = datagen("show", str(tiny_dataset), "--n", "5", "--save", str(tmp_path / "sheet.png"))
    assert result.returncode == 0 and result.stdout.strip() == str(tmp_path / "sheet.png")
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.mode == "RGB" and sheet.width >= 3 * 192 and sheet.height > 2 * 192


def test_show_class_filter_and_fixed_colours(tiny_dataset):
    ds = open_output(tiny_dataset)
    cow = next(cid for cid, name in ds.names.items() if name == "cow")
    with_cow = [s["__key__"] for p in ds.shards for s in read_shard(p)
                if (np.array(Image.open(io.BytesIO(s["seg.png"]))) == cow).any()]
    picked = pick_samples(ds, 16, "cow")  # samples whose mask labels cow pixels, not those whose prompt names it
    assert with_cow and [s["key"] for s in picked] == with_cow
    assert class_colour(0) == (0, 0, 0) and class_colour(1) == (128, 0, 0) and class_colour(15) == (192, 128, 128)
    assert len({class_colour(i) for i in range(256)}) == 256


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
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=21)
    for c in stats["classes"]:
        assert c["pixel_share"] == pytest.approx(counts[c["id"]] / counts.sum(), abs=1e-6)
    assert stats["background_pixel_share"] == pytest.approx(counts[0] / counts.sum(), abs=1e-5)
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
    (_truncate, "shard-000001.tar is truncated or corrupt (at key 00000000000"),
])
@pytest.mark.parametrize("command", ["show", "stats"])
def test_bad_input_gets_one_line_and_exit_2(datagen, copy, damage, message, command):
    damage(copy)
    result = datagen(command, str(copy))
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


@pytest.mark.parametrize("change, message", [
    (_resize_mask, "mask is 32x32 (or not one channel), image 64x64"),
    (_foreign_class, "class ids [77] are not in the vocabulary"),
    (_broken_rle, "RLE"),
    (_pickle_member, "would run code when loaded (pickle)"),
    (_instance_without_class, "an instance has no class_id or name"),
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
