"""Phase bookkeeping and the output folder: stale checkpoints, unfinished phase A, safe output reuse."""

import json
import os
import time

import pytest

from pipeline.config import ConfigError, RunConfig, load_preset
from pipeline.dataset.atomic import STALE_TEMPORARY_SECONDS, temporary_path
from pipeline.dataset.layout import DATA_DIR, GROUNDING_DIR, ORACLE_DIR
from pipeline.dataset.manifest import check_output, output_lock
from pipeline.dataset.shards import write_shard
from pipeline.run.phases import PhaseError, check_earlier_phases, run_train_phase, training_is_current
from pipeline.training.job import recover_interrupted_training


def make_config(out, n=8) -> RunConfig:
    preset = load_preset("tiny", {"bootstrap_n": 8, "shard_size": 4})
    return RunConfig(vocab="voc", out=out, preset_name="tiny", preset=preset, n=n)


def finish_shard(folder, shard_id, size=4):
    folder.mkdir(parents=True, exist_ok=True)
    start = shard_id * size
    write_shard(folder, shard_id, [], {"shard": shard_id, "start": start, "end": start + size, "planned": size,
                                       "written": 0, "failed": {}, "class_instances": {}})


def test_checkpoint_is_stale_when_the_oracle_shards_changed(tmp_path):
    config = make_config(tmp_path)
    finish_shard(tmp_path / ORACLE_DIR, 0)
    (tmp_path / GROUNDING_DIR).mkdir()
    (tmp_path / GROUNDING_DIR / "training.json").write_text(json.dumps(
        {"source": "oracle", "fingerprint": config.fingerprint(), "oracle_shards": {"shard-000000": 0}}))
    assert training_is_current(config)
    assert not training_is_current(make_config(tmp_path).model_copy(update={"seed": 5}))
    finish_shard(tmp_path / ORACLE_DIR, 1)  # phase A completed after training on part of it
    assert not training_is_current(config)


def test_training_refuses_an_unfinished_phase_a(tmp_path):
    config = make_config(tmp_path)
    finish_shard(tmp_path / ORACLE_DIR, 0)
    with pytest.raises(PhaseError, match=r"1 oracle shards missing.*datagen generate"):
        run_train_phase(config, runtime=None)


def test_interrupted_checkpoint_swap_keeps_a_checkpoint(tmp_path):
    old = tmp_path / f"{GROUNDING_DIR}.old123"
    old.mkdir()
    (old / "model.safetensors").write_text("previous")
    (tmp_path / f"{GROUNDING_DIR}.tmp123").mkdir()  # killed before the new one was moved in
    recover_interrupted_training(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [GROUNDING_DIR]
    assert (tmp_path / GROUNDING_DIR / "model.safetensors").read_text() == "previous"


def test_label_alone_refuses_a_stale_checkpoint(tmp_path):
    config = make_config(tmp_path)
    finish_shard(tmp_path / ORACLE_DIR, 0)
    (tmp_path / GROUNDING_DIR).mkdir()
    (tmp_path / GROUNDING_DIR / "training.json").write_text(json.dumps(
        {"fingerprint": config.fingerprint(), "oracle_shards": {}}))
    with pytest.raises(PhaseError, match="other oracle samples.*datagen train"):
        check_earlier_phases(config, {"label"})
    check_earlier_phases(config, {"oracle", "train", "label"})  # `run` retrains it


def test_a_second_process_on_the_same_output_is_refused(tmp_path):
    config = make_config(tmp_path / "out").model_copy(update={"cache_dir": tmp_path / "cache"})
    with output_lock(config):
        with pytest.raises(ConfigError, match="another datagen process is writing"):
            with output_lock(config):
                pass
    with output_lock(config):  # released
        pass


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_output(make_config(tmp_path / "out"))


def test_a_smaller_n_than_the_samples_on_disk_is_refused(tmp_path):
    config = make_config(tmp_path, n=8)
    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": config.fingerprint()}))
    finish_shard(tmp_path / DATA_DIR, 0)
    finish_shard(tmp_path / DATA_DIR, 1)
    check_output(config)
    check_output(make_config(tmp_path, n=20))  # growing a dataset is fine
    with pytest.raises(ConfigError, match=r"holds samples 0\.\.7, more than --n 6"):
        check_output(make_config(tmp_path, n=6))


def test_two_runs_racing_for_one_folder_cannot_mix_configs(tmp_path):
    """Runs on two machines (no shared lock) both found the folder free; the second to claim it stops."""
    from pipeline.dataset.manifest import claim_output

    mine, theirs = make_config(tmp_path), make_config(tmp_path).model_copy(update={"seed": 9})
    check_output(mine)
    check_output(theirs)
    claim_output(mine, {"fingerprint": mine.fingerprint()}, labelling=True)
    with pytest.raises(ConfigError, match="another config"):
        claim_output(theirs, {"fingerprint": theirs.fingerprint()}, labelling=True)
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"fingerprint": mine.fingerprint()}
    claim_output(mine, {"fingerprint": mine.fingerprint(), "rerun": True}, labelling=True)  # the owner reopens it
    assert json.loads((tmp_path / "manifest.json").read_text())["rerun"]
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_temporary_names_never_collide_across_writers():
    """Writers on many machines share one folder, where process ids collide."""
    names = {temporary_path("shard-000000.tar") for _ in range(100)}
    assert len(names) == 100 and all(p.name.startswith("shard-000000.tar.tmp") for p in names)


def test_reopening_a_folder_removes_stale_temporaries_only(tmp_path):
    """A young temporary may be a concurrent same-config run's shard being written: it is kept."""
    from pipeline.dataset.manifest import prepare_output

    config = make_config(tmp_path / "out").model_copy(update={"cache_dir": tmp_path / "cache"})
    prepare_output(config, {}, config.vocabulary(), (DATA_DIR,), labelling=True)
    live, stale = (temporary_path(tmp_path / "out" / DATA_DIR / f"shard-00000{i}.tar") for i in (0, 1))
    live.write_bytes(b"being written")
    stale.write_bytes(b"left by a killed run")
    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (old, old))
    prepare_output(config, {}, config.vocabulary(), (DATA_DIR,), labelling=True)
    assert live.exists() and not stale.exists()
