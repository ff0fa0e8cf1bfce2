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
            for p in sorted(out.rglob("shard-*.stats.json"))}


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
    assert list(out.glob("oracle/*.stats.json")) and not list(out.glob("data/*.stats.json")), "not killed mid-run"
    whole_shards(out)

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert whole_shards(out) == whole_shards(reference)
    assert stats(out) == stats(reference) and len(stats(out)) == 5  # 3 oracle shards, 2 dataset shards
    assert list(out.rglob("*.tmp*")) == []
