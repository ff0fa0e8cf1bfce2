"""Hostile output folders and faults (issue 18): damaged manifest, stats, training record and classes file,
full disks, unwritable --out, lock files, foreign checkpoints, real images and masks that are not what
they claim, and the progress rate. Each is one line (or a repair), nothing half-written stays, nothing
finished is lost."""

import errno
import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from zs3_fixtures import decompression_bomb, make_voc

from pipeline.cli.progress import ItemsPerSecond, TimeRemaining
from pipeline.config import ConfigError, RunConfig, load_preset
from pipeline.dataset.atomic import make_folder
from pipeline.dataset.layout import CLASSES, DATA_DIR, GROUNDING_DIR, MANIFEST, Phase
from pipeline.dataset.manifest import (
    _same_file,
    check_output,
    check_writable,
    classes_file,
    output_lock,
    restore_classes,
)
from pipeline.dataset.plan import pending
from pipeline.dataset.shards import finished_stats, stats_path, write_shard
from pipeline.evaluate.zs3 import train as zs3_train
from pipeline.evaluate.zs3.real import voc_split
from pipeline.evaluate.zs3.run import _resume
from pipeline.evaluate.zs3.transforms import eval_transform
from pipeline.run.phases import PhaseError, has_pending_work, shard_tasks
from pipeline.training.job import install
from stages.errors import DataError, WriteError
from stages.grounding.model import GroundingConfig, GroundingModule


def make_config(out: Path, n: int = 8) -> RunConfig:
    preset = load_preset("tiny", {"bootstrap_n": 4, "shard_size": 4})
    return RunConfig(vocab="voc", out=out, preset_name="tiny", preset=preset, n=n, cache_dir=out.parent / "cache")


def one_line(err: Exception) -> str:
    assert "\n" not in str(err), str(err)
    return str(err)


def finish_shard(folder: Path, shard_id: int, **changes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    start = shard_id * 4
    write_shard(folder, shard_id, [], {"shard": shard_id, "start": start, "end": start + 4, "planned": 4,
                                       "written": 0, "failed": {}, "class_instances": {}, **changes})


MANIFESTS = [  # (manifest.json text, given the config's fingerprint where it is an object)
    "[1]", "{", "", "\"x\"", "[" * 100_000,
    {"vocabulary": "x"}, {"vocabulary": {"classes": [1, 2]}}, {"config": [1]}, {"config": {"preset": 3}},
]


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_a_damaged_manifest_is_refused_and_left_as_it_is(tmp_path, manifest):
    config = make_config(tmp_path / "out")
    config.out.mkdir()
    text = manifest if isinstance(manifest, str) else json.dumps({"fingerprint": config.fingerprint(), **manifest})
    (config.out / MANIFEST).write_text(text)
    with pytest.raises(ConfigError) as raised:
        check_output(config)
    assert f"{config.out / MANIFEST} is damaged" in one_line(raised.value) and "restore it" in str(raised.value)
    assert (config.out / MANIFEST).read_text() == text


STATS_DAMAGE = [{"written": "4"}, {"planned": None}, {"failed": "x"}, {"failed": {"nan_latents": "1"}},
                {"class_instances": {"dog": 1.5}}, {"start": "0"}, {"written": True}]


@pytest.mark.parametrize("change", STATS_DAMAGE)
def test_damaged_stats_leave_their_shard_unfinished_so_a_rerun_redoes_it(tmp_path, change):
    config = make_config(tmp_path / "out")
    for shard_id in (0, 1):
        finish_shard(config.out / DATA_DIR, shard_id, **(change if shard_id == 1 else {}))
    assert [t.shard_id for t in pending(shard_tasks(config, Phase.LABEL))] == [1]
    assert [s["shard"] for s in finished_stats(config.out / DATA_DIR)] == [0]


@pytest.mark.parametrize("text", ["[1]", "{", ""])
def test_damaged_stats_files_that_are_not_objects_count_as_unfinished(tmp_path, text):
    config = make_config(tmp_path / "out")
    finish_shard(config.out / DATA_DIR, 0)
    stats_path(config.out / DATA_DIR, 0).write_text(text)
    assert [t.shard_id for t in pending(shard_tasks(config, Phase.LABEL))] == [0, 1]


@pytest.mark.parametrize("text", ["{", "[]", "\"x\""])
def test_a_damaged_training_record_is_named_and_the_checkpoint_kept(tmp_path, text):
    config = make_config(tmp_path / "out")
    (config.out / GROUNDING_DIR).mkdir(parents=True)
    (config.out / GROUNDING_DIR / "training.json").write_text(text)
    with pytest.raises(PhaseError) as raised:
        has_pending_work(config, frozenset({Phase.TRAIN}))
    assert "grounding/training.json is damaged" in one_line(raised.value) and "delete" in str(raised.value)
    assert (config.out / GROUNDING_DIR / "training.json").read_text() == text


@pytest.mark.parametrize("text", [None, "{", "[]", '{"classes": [{"id": 1, "name": "cat", "seen": true}]}'])
def test_classes_json_is_rewritten_when_missing_damaged_or_another_vocabularys(tmp_path, text):
    config = make_config(tmp_path / "out")
    config.out.mkdir()
    if text is not None:
        (config.out / CLASSES).write_text(text)
    assert restore_classes(config, config.vocabulary())
    assert json.loads((config.out / CLASSES).read_text()) == classes_file(config.vocabulary())
    assert not restore_classes(config, config.vocabulary())  # intact: left alone


def test_lock_files_are_removed_on_release_and_a_stale_handle_is_not_the_lock(tmp_path):
    config = make_config(tmp_path / "out")
    locks = config.cache_dir / "locks"
    with output_lock(config):
        (path,) = locks.iterdir()
        stale = open(path)  # a process that opened the lock file while it was held
        with pytest.raises(ConfigError, match="another datagen process is writing"), output_lock(config):
            pass
    assert list(locks.iterdir()) == []
    assert not _same_file(stale, path)  # locking this handle now would lock a removed file: output_lock retries
    with output_lock(config):
        assert _same_file(open(path), path)
    stale.close()
    for _ in range(3):
        with output_lock(config):
            pass
    assert list(locks.iterdir()) == []


def disk_full_for(suffix: str, monkeypatch) -> None:
    """Writes of files ending in ``suffix`` fail as on a full disk (what safetensors met in the probe)."""
    write_bytes = Path.write_bytes

    def full(self, data):
        if self.name.endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)


def test_a_full_disk_while_the_checkpoint_is_written_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    module = GroundingModule(GroundingConfig(feature_channels={4: 8, 8: 8}, text_dim=8, image_size=16,
                                             reduce_channels=(4, 4), width=8, heads=2, layers=1, patch_size=2))
    out = tmp_path / "out"
    install(out, module, {"steps": 1})
    before = {p.name: p.read_bytes() for p in (out / GROUNDING_DIR).iterdir()}
    disk_full_for(".safetensors", monkeypatch)
    with pytest.raises(WriteError) as raised:
        install(out, module, {"steps": 2})
    assert one_line(raised.value) == f"cannot write {out / GROUNDING_DIR}: No space left on device"
    assert sorted(p.name for p in out.iterdir()) == [GROUNDING_DIR]  # no grounding.tmp*/ nor grounding.old*/
    assert {p.name: p.read_bytes() for p in (out / GROUNDING_DIR).iterdir()} == before  # the previous one kept


def test_a_full_disk_while_the_zs3_checkpoint_is_written_is_one_line_and_keeps_the_last(tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError; the OSError under it is what the user sees."""
    state = zs3_train.TrainState(torch.nn.Linear(2, 2), None, None, None, step=3, losses=[1.0])
    state.state_dict = lambda fingerprint: {"fingerprint": fingerprint, "weights": torch.zeros(4096)}
    path = tmp_path / "checkpoint.pt"
    zs3_train.save_checkpoint(state, path, "f")
    kept = path.read_bytes()

    class FullDisk:
        def __init__(self, *args):
            self.file = open(*args)  # noqa: SIM115 - closed in __exit__

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(zs3_train, "open", FullDisk, raising=False)
    with pytest.raises(WriteError) as raised:
        zs3_train.save_checkpoint(state, path, "f")
    assert one_line(raised.value) == f"cannot write {path}: No space left on device"
    assert path.read_bytes() == kept and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_out_that_cannot_be_made_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"--out /proc/datagen/x: cannot write in /proc"):
        check_writable(Path("/proc/datagen/x"))
    with pytest.raises(WriteError, match="cannot create folder /proc/datagen/x"):
        make_folder(Path("/proc/datagen/x"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="file is a file, not a folder"):
        check_writable(tmp_path / "file" / "out")
    with pytest.raises(WriteError, match="a file of that name .* is in the way"):
        make_folder(tmp_path / "file" / "out")
    check_writable(tmp_path / "new" / "out")  # fine, and nothing was made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_read_only_file_system_is_one_line(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ConfigError, match="cannot write in .* \\(Read-only file system\\)"):
        check_writable(tmp_path / "out")
    with pytest.raises(WriteError, match="cannot create folder .*out: Read-only file system"):
        make_folder(tmp_path / "out")


def test_the_rate_is_never_negative_when_a_retried_shard_takes_back_its_samples():
    clock = iter(float(t) for t in range(100))
    progress = Progress(console=Console(file=open(os.devnull, "w")), get_time=lambda: next(clock))  # noqa: SIM115
    task_id = progress.add_task("C label", total=16)
    progress.advance(task_id, 4)
    progress.advance(task_id, -4)  # the local executor's retry: those samples will be counted again
    task = progress.tasks[0]
    assert task.speed is not None and task.speed <= 0
    shown = ItemsPerSecond().render(task).plain + " " + TimeRemaining().render(task).plain
    assert not re.search(r"-\s*\d", shown.replace("-:--:--", "")), shown
    progress.advance(task_id, 8)
    assert ItemsPerSecond().render(progress.tasks[0]).plain.endswith("samples/s")


FOREIGN_CHECKPOINTS = [  # (what is written at checkpoint.pt, what the line says)
    (lambda p: p.write_bytes(b"not a checkpoint"), "torch.load with weights_only refuses it"),
    (lambda p: p.write_bytes(b""), "checkpoint.pt is not a checkpoint of this evaluation"),
    (lambda p: p.write_bytes(pickle.dumps(Trap(p.parent / "ran"))), "torch.load with weights_only refuses it"),
    (lambda p: torch.save({"fingerprint": "other", "step": 1}, p), "its fingerprint is other, this evaluation's mine"),
    (lambda p: torch.save({"step": 1}, p), "its fingerprint is None"),
    (lambda p: torch.save([1, 2], p), "its fingerprint is None"),
]


class Trap:
    """Unpickling this writes a file: proof that a checkpoint ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the trap's pickle
@pytest.mark.parametrize("write, message", FOREIGN_CHECKPOINTS)
def test_resuming_from_a_checkpoint_that_is_not_its_own_is_one_line(tmp_path, write, message):
    path = tmp_path / "checkpoint.pt"
    write(path)
    with pytest.raises(DataError) as raised:
        _resume(None, path, torch.device("cpu"), "mine")  # refused before any state is touched
    assert message in one_line(raised.value) and "delete it to train from the start" in str(raised.value)
    assert not (tmp_path / "ran").exists()


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp("voc") / "VOC2012", n_train=2, n_val=3)


def wrong_size(path: Path) -> None:
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(path)


REAL_DAMAGE = [  # (split, what is damaged, how, what the line says)
    ("val", "mask", wrong_size, "is 32x32, its image"),
    ("train", "mask", wrong_size, "is 32x32, its image"),
    ("val", "mask", lambda p: p.write_bytes(decompression_bomb()), "is a decompression bomb"),
    ("train", "mask", lambda p: p.write_bytes(decompression_bomb(9000)), "is 9000x9000 pixels"),
    ("val", "mask", lambda p: Image.new("RGB", (64, 64)).save(p), "is a mode RGB image"),
    ("val", "mask", lambda p: Image.new("I;16", (64, 64)).save(p), "is a mode I;16 image"),
    ("val", "image", lambda p: p.write_bytes(b"not a jpeg"), "does not decode as an image"),
    ("train", "image", lambda p: p.write_bytes(p.read_bytes()[:300]), "does not decode as an image"),
    ("val", "image", lambda p: p.write_bytes(decompression_bomb()), "is a decompression bomb"),
]


@pytest.mark.parametrize("split, member, damage, message", REAL_DAMAGE)
@pytest.mark.parametrize("index", [0, 1])  # the first pair is read before --out is claimed, the others when used
def test_real_images_and_masks_that_are_not_what_they_claim_are_one_line_naming_the_file(
        voc_root, voc, tmp_path, split, member, damage, index, message):
    import shutil

    root = shutil.copytree(voc_root, tmp_path / "VOC2012")
    image_id = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[index]
    folder, ext = ("SegmentationClass", "png") if member == "mask" else ("JPEGImages", "jpg")
    path = root / folder / f"{image_id}.{ext}"
    damage(path)
    with pytest.raises(DataError) as raised:
        dataset = voc_split(root, split, voc, eval_transform())
        dataset[index]
    assert str(path) in one_line(raised.value) and message in str(raised.value)
