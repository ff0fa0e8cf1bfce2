"""A run stopped in each phase, as a user stops it, resumes to the dataset an uninterrupted run makes.

Kills (SIGKILL, a subprocess of the in-process executor writing to a folder) land where the faults of
``pipeline.run.faults`` put them: in phase B right after a resumable checkpoint (the rerun skips the
batches already trained on), and in phase C on the writer thread while the next shard computes. Ctrl-C
(SIGINT) reaches the command while a shard waits at its writer. Shards that fail, in phase A and in
phase C, and a dataset extended with a larger ``--n``, go through the command as a user runs it.

Phase A (the slow one: the oracle) runs once per module; each test starts from a copy of its output.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.run.faults import FAULTS_ENV

ROOT = Path(__file__).resolve().parents[2]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # as the in-process runs here: float sums depend on the thread count

pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


@pytest.fixture(scope="module")
def preset(tmp_path_factory) -> Path:
    """The tiny preset with a resumable checkpoint after each of its 4 training steps, and batches of one
    sample: the oracle data (2 samples at seed 0; the random oracle misses the others) is 2 batches, so a
    run resumed after step 1 must skip the right one."""
    raw = yaml.safe_load((ROOT / "configs" / "presets" / "tiny.yaml").read_text())
    raw["train"].update(checkpoint_every=1, batch_size=1)
    path = tmp_path_factory.mktemp("preset") / "tiny-checkpoints.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def args(preset, out, n=6) -> list[str]:
    return ["--vocab", "voc", "--n", str(n), "--models", str(preset), "--bootstrap-n", "4", "--shard-size", "2",
            "--batch-size", "2", "--seed", "0", "--out", str(out)]


def invoke(command: str, *arguments, faults: dict | None = None):
    """``datagen COMMAND ARGS`` in this process (exit code and output), with ``faults`` injected."""
    from pipeline.cli import app

    env = {FAULTS_ENV: json.dumps(faults)} if faults else None
    return CliRunner().invoke(app, [command, *map(str, arguments)], env=env)


def start(command: str, *arguments, faults: dict) -> subprocess.Popen:
    """``datagen COMMAND ARGS`` as its own process (a session of its own, as a terminal's job), with Ctrl-C's
    default handling: a shell's background job starts with SIGINT ignored, which Python would keep."""
    env = {**os.environ, **ONE_THREAD, FAULTS_ENV: json.dumps(faults)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", command, *map(str, arguments)], env=env,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture(scope="module")
def phase_a(preset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phase-a") / "out"
    result = invoke("generate", *args(preset, out))
    assert result.exit_code == 0, result.output
    written = sum(json.loads(p.read_text())["written"] for p in out.glob("oracle/*.stats.json"))
    assert written == 2, "a resumed training skips batches of a training set of at least 2 samples"
    return out


@pytest.fixture(scope="module")
def reference(preset, phase_a, tmp_path_factory) -> Path:
    """The uninterrupted run: phase A's output, trained and labelled in one go."""
    out = shutil.copytree(phase_a, tmp_path_factory.mktemp("reference") / "out")
    result = invoke("run", *args(preset, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def trained(reference, tmp_path) -> Path:
    """The reference with phases A and B done and no dataset shard, card or index yet."""
    out = shutil.copytree(reference, tmp_path / "out")
    for path in (out / "data").iterdir():
        path.unlink()
    (out / "README.md").unlink()
    return out


def whole_shards(out) -> dict[str, bytes]:
    """Every shard a reader can see (a ``.tar`` with its stats), each checked to be a complete tar."""
    shards = {}
    for stats in sorted(out.rglob(".shard-*.stats.json")):
        path = stats.with_name(stats.name[1:].replace(".stats.json", ".tar"))
        with tarfile.open(path) as tar:
            assert all(tar.extractfile(m).read() is not None for m in tar.getmembers())
        shards[str(path.relative_to(out))] = path.read_bytes()
    return shards


def made(out) -> dict[str, object]:
    """What two runs of one config must share: shards, their stats (less timing), the checkpoint, the index."""
    stats = {str(p.relative_to(out)): {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
             for p in sorted(out.rglob(".shard-*.stats.json"))}
    return {"shards": whole_shards(out), "stats": stats,
            "checkpoint": (out / "grounding" / "model.safetensors").read_bytes(),
            "index": json.loads((out / "data" / ".index.wids.json").read_text())}


def data_shards(out) -> list[str]:
    return [name for name in whole_shards(out) if name.startswith("data/")]


def temporaries(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp*"))


def test_a_run_killed_while_training_resumes_from_its_checkpoint_to_an_uninterrupted_run(
        preset, phase_a, reference, tmp_path):
    out = shutil.copytree(phase_a, tmp_path / "out")
    marker = tmp_path / "killed"
    killed = start("run", *args(preset, out), faults={"kill_training": {"step": 1, "marker": str(marker)}})
    output = killed.communicate(timeout=600)[0]
    assert killed.returncode == -signal.SIGKILL and marker.exists(), output
    progress = json.loads((out / "grounding-resume" / "progress.json").read_text())
    assert progress["step"] == 1 and not (out / "grounding").exists() and not list(out.glob("data/*.tar"))

    resumed = invoke("run", *args(preset, out))
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((out / "grounding" / "training.json").read_text())
    assert record["resumed_at"] == 1 and record["steps"] == 4
    straight = json.loads((reference / "grounding" / "training.json").read_text())
    assert record["losses"] == straight["losses"]  # the same batches, in the same order, after the skip
    assert made(out) == made(reference)
    assert not (out / "grounding-resume").exists() and temporaries(out) == []


def test_a_run_killed_while_its_writer_thread_writes_a_shard_resumes_to_an_uninterrupted_run(
        preset, reference, trained, tmp_path):
    marker = tmp_path / "killed"
    killed = start("run", *args(preset, trained),
                   faults={"kill_writer": {"phase": "label", "shard": 1, "marker": str(marker)}})
    output = killed.communicate(timeout=600)[0]
    assert killed.returncode == -signal.SIGKILL and marker.exists(), output
    assert data_shards(trained) == ["data/shard-000000.tar"]  # shard 1 was in flight: only its temporary
    assert [name.split(".tmp")[0] for name in temporaries(trained)] == ["data/shard-000001.tar"]
    killed_at = time.time()

    resumed = invoke("run", *args(preset, trained))
    assert resumed.exit_code == 0, resumed.output
    assert made(trained) == made(reference)
    # the resumed run leaves no temporary; the one the kill cut short stays until it is stale (an hour)
    assert [p for p in trained.rglob("*.tmp*") if p.stat().st_mtime >= killed_at] == []


def test_ctrl_c_finishes_the_shard_at_the_writer_exits_130_and_the_rerun_resumes(preset, reference, trained,
                                                                                  tmp_path):
    marker = tmp_path / "writing"
    run = start("run", *args(preset, trained),
                faults={"pause_writer": {"phase": "label", "shard": 0, "marker": str(marker), "seconds": 120}})
    deadline = time.time() + 300
    while not marker.exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never reached its writer"
    run.send_signal(signal.SIGINT)  # Ctrl-C, while shard 0 waits at the writer
    time.sleep(1)
    marker.unlink()  # the writer goes on
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 130, output
    assert "interrupted: finished shards are kept; rerun the same command to resume" in output
    assert "Traceback" not in output
    shards = data_shards(trained)
    assert "data/shard-000000.tar" in shards and "data/shard-000002.tar" not in shards
    assert temporaries(trained) == []

    resumed = invoke("run", *args(preset, trained))
    assert resumed.exit_code == 0, resumed.output
    assert made(trained) == made(reference)


def test_a_shard_that_keeps_failing_exits_1_after_the_other_shards_are_written(preset, reference, trained):
    failed = invoke("run", *args(preset, trained), faults={"fail_shards": [1]})
    assert failed.exit_code == 1, failed.output
    assert "phase C: shard 1 failed: OSError: injected fault in shard 1" in failed.output
    assert "rerun the same command to retry the failed shards" in failed.output
    assert data_shards(trained) == ["data/shard-000000.tar", "data/shard-000002.tar"]
    assert temporaries(trained) == []

    retried = invoke("run", *args(preset, trained))
    assert retried.exit_code == 0, retried.output
    assert made(trained) == made(reference)


def test_a_failed_oracle_shard_stops_the_run_before_training(preset, phase_a, tmp_path):
    out = shutil.copytree(phase_a, tmp_path / "out")
    for path in out.glob("oracle/*shard-000001.*"):  # the shard and its (hidden) stats
        path.unlink()
    failed = invoke("run", *args(preset, out), faults={"fail_shards": [1]})
    assert failed.exit_code == 1, failed.output
    assert "phase A: shard 1 failed: OSError: injected fault in shard 1" in failed.output
    assert not (out / "grounding").exists() and not (out / "grounding-resume").exists()
    assert list(whole_shards(out)) == ["oracle/shard-000000.tar"] and not list(out.glob("data/*"))


def test_a_larger_n_extends_the_dataset_to_the_one_made_at_that_n(preset, reference, trained):
    first = invoke("run", *args(preset, trained, n=4))
    assert first.exit_code == 0, first.output
    kept = {p.name: p.stat().st_mtime_ns for p in trained.glob("data/*shard-*")}
    assert sorted(kept) == [f".shard-00000{i}.stats.json" for i in (0, 1)] + [f"shard-00000{i}.tar" for i in (0, 1)]

    extended = invoke("run", *args(preset, trained, n=6))
    assert extended.exit_code == 0, extended.output
    assert {name: (trained / "data" / name).stat().st_mtime_ns for name in kept} == kept  # not rewritten
    assert made(trained) == made(reference)
    assert json.loads((trained / "manifest.json").read_text())["config"]["n"] == 6
    assert "6 samples" in (trained / "README.md").read_text()
