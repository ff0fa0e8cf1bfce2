"""`datagen run` on Ray through the CLI: a driver killed mid-run resumes to an uninterrupted run's bytes."""

import json
import os
import signal
import subprocess
import sys
import tarfile
import time

ARGS = ["--vocab", "voc", "--n", "4", "--models", "tiny", "--bootstrap-n", "6", "--train-steps", "2",
        "--shard-size", "2", "--batch-size", "2", "--seed", "5"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # as a 1-CPU Ray worker: CPU float sums depend on the thread count


def datagen(*args) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def whole_shards(out) -> dict[str, bytes]:
    """Every shard file a reader can see, each checked to be a complete tar."""
    shards = {}
    for path in sorted(out.rglob("shard-*.tar")):
        with tarfile.open(path) as tar:
            assert all(tar.extractfile(m).read() is not None for m in tar.getmembers())
        shards[str(path.relative_to(out))] = path.read_bytes()
    return shards


def stats(out) -> dict[str, dict]:
    return {str(p.relative_to(out)): {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
            for p in sorted(out.rglob(".shard-*.stats.json"))}


def test_a_killed_driver_resumes_to_the_bytes_of_an_uninterrupted_run(ray_cluster, tmp_path):
    env = {**os.environ, **ONE_THREAD}
    reference = tmp_path / "uninterrupted"
    done = subprocess.run(datagen("run", *ARGS, "--out", str(reference)), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    command = datagen("run", *ARGS, "--out", str(out), "--ray-address", ray_cluster)
    driver = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("oracle/*.stats.json")) and driver.poll() is None and time.time() < deadline:
        whole_shards(out)  # never a partial shard in sight
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = time.time()
    assert list(out.glob("oracle/*.stats.json")) and not list(out.glob("data/*.stats.json")), "not killed mid-run"
    whole_shards(out)

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert whole_shards(out) == whole_shards(reference)
    assert stats(out) == stats(reference) and len(stats(out)) == 5  # 3 oracle shards, 2 dataset shards
    # the resumed run leaves no temporary; one the kill cut short stays until it is stale (an hour)
    assert [p for p in out.rglob("*.tmp*") if p.stat().st_mtime >= killed_at] == []


def one_line_error(result) -> str:
    """The error line that ends the run (only the run's header comes before it: the cluster is checked
    before the output folder is made), with exit 2 and no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_more_workers_than_the_cluster_can_run_beside_encoding_is_one_line(ray_cluster, tmp_path):
    """The session cluster has 2 CPUs: 2 one-CPU workers would leave none for writing shards."""
    result = subprocess.run(datagen("generate", *ARGS, "--out", str(tmp_path / "out"), "--ray-address", ray_cluster,
                                    "--workers", "2"), capture_output=True, text=True, timeout=300)
    assert "cluster has 2 CPUs and 0 GPUs: 2 workers with 1 CPUs" in one_line_error(result)
    assert not (tmp_path / "out").exists()  # refused before the output folder is claimed


def test_an_unreachable_cluster_is_one_line(tmp_path):
    """Ray would retry the address for minutes; the driver checks it answers first."""
    started = time.time()
    result = subprocess.run(datagen("generate", *ARGS, "--out", str(tmp_path / "out"), "--ray-address",
                                    "127.0.0.1:1"), capture_output=True, text=True, timeout=300)
    assert "cannot reach Ray at 127.0.0.1:1: " in one_line_error(result)
    assert time.time() - started < 120
    assert not (tmp_path / "out").exists()
