"""`--out s3://bucket/prefix`: a run, a killed run's resume, the claim and the readers, against a real
S3-speaking server (moto's, on 127.0.0.1) through the same fsspec client code a user's run takes; the
endpoint and credentials reach it through the standard AWS environment variables, as on a cluster."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image
from s3_server import s3_server

ARGS = ["--vocab", "voc", "--n", "4", "--models", "tiny", "--bootstrap-n", "6", "--train-steps", "2",
        "--shard-size", "2", "--batch-size", "2", "--seed", "5"]
BUCKET = "datasets"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the same float sums in every run compared byte for byte


def datagen(*args, **popen):
    command = [sys.executable, "-m", "pipeline.cli", *args]
    if popen:
        return subprocess.Popen(command, env={**os.environ, **ONE_THREAD}, **popen)
    return subprocess.run(command, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def store(cache_dir):
    """A moto S3 server with one bucket; the AWS environment points at it for this module (and the runs
    it starts), and is restored afterwards."""
    with s3_server(BUCKET) as fs:
        yield fs


def objects(fs, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` by its name relative to it; each tar checked to be a whole tar."""
    found = {}
    try:
        keys = sorted(fs.find(f"{BUCKET}/{prefix}"))
    except FileNotFoundError:  # nothing under it yet
        return found
    for key in keys:
        try:
            data = fs.cat_file(key)
        except FileNotFoundError:  # a live run's own transient object (its write probe), gone since the listing
            continue
        if key.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                assert all(tar.extractfile(m).read() is not None for m in tar.getmembers())
        found[key.removeprefix(f"{BUCKET}/{prefix}/")] = data
    return found


def shards_and_stats(files: dict[str, bytes]) -> dict[str, object]:
    """Shards by bytes, stats without their timing: what two runs of one config must share."""
    return {name: data if name.endswith(".tar") else {k: v for k, v in json.loads(data).items() if k != "seconds"}
            for name, data in files.items() if name.endswith((".tar", ".stats.json"))}


@pytest.fixture(scope="module")
def uploaded(store, tmp_path_factory):
    """One run to s3://datasets/run and the same run to a local folder."""
    local = tmp_path_factory.mktemp("store") / "local"
    for out in (f"s3://{BUCKET}/run", str(local)):
        result = datagen("run", *ARGS, "--out", out)
        assert result.returncode == 0, result.stderr
    return f"s3://{BUCKET}/run", local


def test_a_run_to_s3_writes_the_layout_and_bytes_of_a_run_to_a_folder(store, uploaded):
    url, local = uploaded
    remote = objects(store, "run")
    here = {str(p.relative_to(local)): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}
    assert set(remote) == set(here)  # manifest, classes, card, wids index, checkpoint, oracle/ and data/
    assert shards_and_stats(remote) == shards_and_stats(here) and len(shards_and_stats(remote)) == 10
    assert remote["grounding/model.safetensors"] == here["grounding/model.safetensors"]
    index = json.loads(remote["data/.index.wids.json"])
    assert [s["filesize"] for s in index["shardlist"]] == [len(remote[f"data/{s['url']}"]) for s in index["shardlist"]]
    assert json.loads(remote["manifest.json"])["config"]["out"] == url
    assert not [name for name in remote if ".tmp" in name or ".datagen-probe" in name]  # nothing temporary left


def test_a_killed_run_resumes_to_the_bytes_of_an_uninterrupted_one(store, uploaded):
    out = f"s3://{BUCKET}/killed"
    driver = datagen("run", *ARGS, "--out", out, start_new_session=True, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not store.glob(f"{BUCKET}/killed/oracle/*.stats.json") and driver.poll() is None and time.time() < deadline:
        objects(store, "killed")  # never a partial shard in sight
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert store.glob(f"{BUCKET}/killed/oracle/*.stats.json"), "killed before any shard was written"
    assert not store.glob(f"{BUCKET}/killed/data/*.stats.json"), "not killed mid-run"

    resumed = datagen("run", *ARGS, "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert shards_and_stats(objects(store, "killed")) == shards_and_stats(objects(store, "run"))


def test_a_second_config_is_refused_on_a_claimed_prefix(store, uploaded):
    url, _ = uploaded
    before = objects(store, "run")
    result = datagen("run", *[a if a != "5" else "6" for a in ARGS], "--out", url)  # --seed 6
    assert result.returncode == 2 and "holds a dataset made with another config" in result.stderr.splitlines()[-1]
    assert objects(store, "run") == before


def test_the_manifest_claim_is_a_create_if_absent_on_the_store(store):
    from pipeline.dataset.atomic import create_exclusive
    from pipeline.dataset.location import location

    claim = location(f"s3://{BUCKET}/claimed/manifest.json")
    assert create_exclusive(claim, b"first") and not create_exclusive(claim, b"second")
    assert store.cat_file(f"{BUCKET}/claimed/manifest.json") == b"first"


def test_of_writers_racing_for_a_new_prefix_exactly_one_claims_it_and_the_rest_retry_then_stop(store):
    """Processes released together, each claiming a prefix with its own config, through a proxy whose
    conditional PUTs race as S3's do (one per key at a time; a concurrent one is answered 409): the
    writers answered 409 retry, find the winner's manifest and stop with the one line."""
    from claim_race import race
    from s3_proxy import ConditionalS3Proxy

    rounds, writers = 5, 4
    urls = [f"s3://{BUCKET}/race-{i}" for i in range(rounds)]
    with ConditionalS3Proxy(os.environ["AWS_ENDPOINT_URL_S3"], hold=0.3) as proxy:
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # the writers' fork server may predate it
        results = race(urls, writers, env={**aws, "AWS_ENDPOINT_URL_S3": proxy.endpoint})
    for i, (url, outcomes) in enumerate(zip(urls, results)):
        winners = [name for name, error in outcomes if error is None]
        assert len(winners) == 1, outcomes
        assert json.loads(store.cat_file(f"{BUCKET}/race-{i}/manifest.json")) == {"fingerprint": winners[0]}
        for name, error in outcomes:
            if name != winners[0]:
                assert error == (f"{url} holds a dataset made with another config (fingerprint {winners[0]}, "
                                 f"this run {name}); choose another --out or delete that folder")
    assert sum(proxy.conflicts.values()) >= rounds, proxy.conflicts  # the 409 path ran, and was retried


def test_a_missing_bucket_is_one_line_before_any_work(store):
    result = datagen("run", *ARGS, "--out", "s3://no-such-bucket/run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: --out s3://no-such-bucket/run: cannot write there")


def test_validate_stats_and_show_read_the_store(store, uploaded, datagen):
    url, local = uploaded
    assert datagen("validate", url).returncode == 0
    there, here = (json.loads(datagen("stats", where, "--json").stdout) for where in (url, local))
    assert there.pop("out") == url and here.pop("out") == str(local) and there == here
    shown = datagen("show", url, "--n", "4")
    assert shown.returncode == 0 and shown.stdout.strip() == f"{url}/show.png"
    assert Image.open(io.BytesIO(store.cat_file(f"{BUCKET}/run/show.png"))).size[0] > 64


def test_export_coco_reads_the_store_as_a_folder(store, uploaded, datagen, tmp_path):
    url, local = uploaded
    for source, out in ((url, tmp_path / "there"), (local, tmp_path / "here")):
        assert datagen("export", "coco", source, "--out", out).returncode == 0
    there, here = ({str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
                   for out in (tmp_path / "there", tmp_path / "here"))
    assert there == here and len(there) == 5  # instances.json and the 4 images, byte for byte


def test_stats_on_the_store_downloads_no_shard(store, uploaded, datagen, monkeypatch):
    """stats adds up the shards' stats objects: no tar is opened or fetched (its size comes from a listing)."""
    import s3fs

    fetched = []
    for name in ("_open", "_cat_file", "_get_file"):
        def spy(self, path, *args, _original=getattr(s3fs.S3FileSystem, name), **kwargs):
            fetched.append(str(path))
            return _original(self, path, *args, **kwargs)
        monkeypatch.setattr(s3fs.S3FileSystem, name, spy)
    result = datagen("stats", uploaded[0], "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["samples"]["written"] > 0
    assert any(p.endswith(".stats.json") for p in fetched) and not [p for p in fetched if p.endswith(".tar")]


def test_datagen_and_webdataset_readers_stream_the_store(store, uploaded):
    import webdataset as wds

    from pipeline.dataset.reader import shard_urls, training_dataset

    url, local = uploaded
    here = {meta["key"]: (image, mask) for image, mask, meta in training_dataset(local)}
    there = {meta["key"]: (image, mask) for image, mask, meta in training_dataset(url)}
    assert set(there) == set(here) and len(here) >= 2
    for key, (image, mask) in there.items():
        assert (image == here[key][0]).all() and (mask == here[key][1]).all()
    urls = shard_urls(url)
    assert urls == [f"{url}/data/shard-00000{i}.tar" for i in range(2)]
    assert {s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)} == set(here)


def test_hugging_face_datasets_reads_the_store(store, uploaded, tmp_path, monkeypatch):
    import datasets

    url, _ = uploaded
    # HF_HUB_OFFLINE (set for every test: no hub) also stops datasets from opening any URL; the store
    # here is on 127.0.0.1, and no hub is asked for anything
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    ds = datasets.load_dataset("webdataset", data_files={"train": f"{url}/data/shard-*.tar"}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    stats = store.glob(f"{BUCKET}/run/data/*.stats.json")
    assert len(ds) == sum(json.loads(store.cat_file(p))["written"] for p in stats) > 0
    assert all(np.array(row["seg.png"]).ndim == 2 for row in ds)


def test_ray_data_reads_the_store(store, uploaded, ray_cluster):
    import pyarrow.fs
    import ray

    from pipeline.dataset.shards import finished_shards
    from pipeline.inspect.folder import read_shard

    url, local = uploaded
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"].removeprefix("http://")
    s3 = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="test", secret_key="test",
                                 region="us-east-1")
    rows = ray.data.read_webdataset(f"{BUCKET}/run/data", filesystem=s3, file_extensions=["tar"]).take_all()
    expected = {s["__key__"] for shard in finished_shards(local / "data") for s in read_shard(shard)}
    assert sorted(r["__key__"] for r in rows) == sorted(expected) and expected
    assert all(r["seg.png"].ndim == 2 for r in rows)


def test_the_ray_executor_writes_straight_to_the_store(store, uploaded):
    """Its own local Ray instance (started by the run, so its workers have the AWS environment): actors
    compute and encoding tasks commit the shards to the store, the bytes of the in-process run's. Its
    driver has two torch threads, the in-process run one: the Ray run trains and labels with its
    workers' one CPU each all the same (issue 26: a checkpoint trained with two changed a score)."""
    out = f"s3://{BUCKET}/ray"
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", *ARGS, "--out", out, "--executor", "ray"],
                            env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    ray_run, in_process = objects(store, "ray"), objects(store, "run")
    assert shards_and_stats(ray_run) == shards_and_stats(in_process)
    assert ray_run["grounding/model.safetensors"] == in_process["grounding/model.safetensors"]


def test_zs3_takes_its_synthetic_data_from_the_store(store, uploaded, voc):
    from pipeline.evaluate.zs3.config import load_segmenter_preset
    from pipeline.evaluate.zs3.synthetic import check_synthetic, synthetic_stream, synthetic_urls
    from pipeline.evaluate.zs3.transforms import train_transform

    url, _ = uploaded
    urls = synthetic_urls(url)
    assert len(urls) == 2 and check_synthetic(urls, voc, url)["classes"]
    preset = load_segmenter_preset("tiny")
    image, mask = next(iter(synthetic_stream(urls, voc, train_transform(preset), seed=0, buffer=2)))
    assert image.shape == (3, preset.crop_size, preset.crop_size) and mask.shape == (preset.crop_size,) * 2


def test_a_kill_mid_upload_leaves_no_multipart_upload_past_the_next_run(store):
    """A multipart upload (s3fs's way above 100 MiB) cut short by a kill is invisible but holds storage:
    the next run aborts those under its output that are older than a live writer's."""
    from pipeline.dataset.atomic import remove_stale_temporaries
    from pipeline.dataset.location import location

    for key in ("stale/data/shard-000000.tar", "elsewhere/shard-000000.tar"):
        store.call_s3("create_multipart_upload", Bucket=BUCKET, Key=key)
    # moto dates every upload 2010, so the age test (an hour: a live writer's upload is kept) is not
    # exercised here; what is aborted is
    remove_stale_temporaries(location(f"s3://{BUCKET}/stale/data"), max_age=0)
    assert [u["Key"] for u in store.list_multipart_uploads(BUCKET)] == ["elsewhere/shard-000000.tar"]


def test_a_checkpoint_whose_upload_was_cut_short_is_not_used(store, uploaded, datagen):
    """The training record is uploaded last: without it the checkpoint is incomplete, and phase C alone
    refuses it, naming the cause."""
    for name in store.find(f"{BUCKET}/run"):
        if "/data/" not in name:  # phase C still to run
            store.copy(name, name.replace(f"{BUCKET}/run/", f"{BUCKET}/torn/", 1))
    store.rm_file(f"{BUCKET}/torn/grounding/training.json")
    result = datagen("label", *ARGS, "--out", f"s3://{BUCKET}/torn")
    assert result.returncode == 2 and "grounding checkpoint in s3://datasets/torn is incomplete" in result.one_line()


def test_missing_credentials_are_one_line_before_any_work(store, monkeypatch, datagen):
    import s3fs

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        for args in (["run", *ARGS, "--out", f"s3://{BUCKET}/nocreds"], ["validate", f"s3://{BUCKET}/run"]):
            result = datagen(*args)
            assert result.returncode == 2 and "cannot reach the store (PartialCredentialsError" in result.one_line()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_a_prefix_made_as_a_console_folder_is_empty(store):
    from pipeline.config import RunConfig, load_preset
    from pipeline.dataset.location import listing, location
    from pipeline.dataset.manifest import check_output
    from stages.errors import ConfigError

    def config(prefix):
        return RunConfig(vocab="voc", out=f"s3://{BUCKET}/{prefix}", preset_name="tiny", preset=load_preset("tiny"),
                         n=4)

    store.pipe_file(f"{BUCKET}/console/", b"")  # what "Create folder" in a store's console makes
    assert store.exists(f"{BUCKET}/console/") and listing(location(f"s3://{BUCKET}/console")) == {}
    check_output(config("console"))  # not "exists, is not empty"
    store.pipe_file(f"{BUCKET}/console/notes.txt", b"mine")  # while a real object in it is refused
    with pytest.raises(ConfigError, match="exists, is not empty and is not a datagen dataset"):
        check_output(config("console"))
