"""A reduced miniature world (four shapes, a few hundred training steps in all): `datagen world build`
writes models the normal loaders read, a second build reuses them, a short `datagen run` on the world
preset works, and the trained oracle finds shapes in rendered scenes better than chance. Quality
numbers belong to `make bench-world`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import ConfigError, RunConfig, load_preset, resolve_vocabulary
from pipeline.local_sources import build, world_folder, world_spec
from pipeline.runtime import Runtime
from stages.oracle import build_small_maskrcnn
from testbed.toy_shapes import FORMS, draw_scene
from testbed.world.build import render_scenes
from testbed.world.train import oracle_quality

CLASSES = ["circle", "square", "triangle", "star"]
PRESET = {
    "sd": "world", "image_size": 32, "steps": 4, "guidance": 4.0, "capture_step": 1, "dtype": "float32",
    "oracle_weights": "world", "oracle_score_threshold": 0.05,
    "grounding": {"reduce_channels": [8, 8, 8], "width": 32, "heads": 4, "layers": 1, "patch_size": 1},
    # a few low-rate steps keep the module near its random init, so its masks reach phase C's shards
    "train": {"steps": 4, "batch_size": 4, "lr": 1.0e-4}, "bootstrap_n": 16, "batch_size": 8, "shard_size": 8,
    "world": {"scenes": 300, "val_scenes": 60, "vae": {"steps": 20, "batch_size": 16, "lr": 2.0e-3},
              "unet": {"steps": 30, "batch_size": 16, "lr": 1.0e-3},
              "oracle": {"steps": 200, "batch_size": 8, "lr": 2.0e-3}, "samples_per_class": 2, "sample_steps": 4},
}


def datagen(*args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}  # on a loaded machine two threads spin-wait for each other
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=root)


@pytest.fixture(scope="module")
def world(tmp_path_factory, cache_dir):
    """The reduced world's preset file and vocabulary, and the report of its build."""
    folder = tmp_path_factory.mktemp("world")
    vocab = folder / "vocab.yaml"
    vocab.write_text(yaml.safe_dump({"name": "shapes-mini", "unseen": ["star"], "classes": CLASSES}))
    preset = folder / "preset.yaml"
    preset.write_text(yaml.safe_dump({**PRESET, "world": {**PRESET["world"], "vocab": str(vocab)}}))
    result = datagen("world", "build", "--models", str(preset))
    assert result.returncode == 0, result.stderr[-4000:]
    return preset, vocab, json.loads(result.stdout.strip().splitlines()[-1])


def test_build_writes_loadable_models_and_a_report(world, cache_dir):
    preset, vocab, report = world
    folder = Path(report["folder"])
    assert report["built_now"] and folder == world_folder(cache_dir, world_spec(load_preset(str(preset)), str(preset)))
    for name in ("model_index.json", "unet/config.json", "vae/config.json", "maskrcnn.safetensors", "report.json",
                 *(f"samples/{c}.png" for c in CLASSES)):
        assert (folder / name).is_file(), name
    for part in ("vae", "unet", "oracle"):
        assert np.isfinite(report["losses"][part]["last"]) and report["times"][part]["wall_s"] > 0, part
    assert set(report["oracle_top_is_true_class"]) == {"rendered", "round_trip"}
    assert len(report["unet_text_gap_percent"]) == 5  # one per timestep bucket, from pure noise to clean
    runtime = Runtime(RunConfig(vocab=str(vocab), out=folder / "unused", preset_name=str(preset),
                                preset=load_preset(str(preset)), n=1, cache_dir=cache_dir, device="cpu"))
    assert runtime.pipe.unet.config.sample_size == 16 and runtime.pipe.vae.config.scaling_factor != 0.18215
    assert set(runtime.oracle.label_ids) == set(CLASSES)  # the oracle's categories come with its weights
    assert build(cache_dir, world_spec(load_preset(str(preset)), str(preset))) == (folder, False)  # reused, not rebuilt


def test_trained_oracle_finds_shapes_better_than_chance(world, cache_dir):
    """On held-out rendered scenes the trained oracle's masks beat an untrained detector's and a
    mask of the image's centre disc (a class-blind guess), and it finds most instances."""
    preset, vocab_path, report = world
    vocab = resolve_vocabulary(str(vocab_path))
    images, masks, _ = render_scenes(vocab, 60, 32, 0.5, seed=7)
    runtime = Runtime(RunConfig(vocab=str(vocab_path), out=Path(report["folder"]) / "unused", preset_name=str(preset),
                                preset=load_preset(str(preset)), n=1, cache_dir=cache_dir, device="cpu"))
    trained = oracle_quality(runtime.oracle, images, masks, CLASSES)
    categories = ("__background__", *CLASSES)
    untrained = type(runtime.oracle)(build_small_maskrcnn(categories, 32, box_score_thresh=0.0).eval(), vocab,
                                     score_threshold=0.0, categories=categories)
    chance = oracle_quality(untrained, images, masks, CLASSES)
    yy, xx = np.mgrid[:32, :32]
    centre = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 10 ** 2
    disc = np.mean([((m > 0) & centre).sum() / ((m > 0) | centre).sum() for m in masks])
    assert trained["miou"] > chance["miou"] + 0.2 and trained["miou"] > disc, (trained, chance["miou"], disc)
    assert np.mean(list(trained["found"].values())) > 0.5, trained


def test_scenes_do_not_tell_the_class_by_colour():
    """Across many scenes the mean colour of each class's pixels is the same within noise: only the
    form tells the class (a colour-coded renderer fails this)."""
    rng = np.random.default_rng(0)
    names = list(FORMS)
    colours: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for _ in range(2000):
        image, mask, _ = draw_scene(rng, 32, names, pair=False)
        value = int(mask.max())
        colours[names[value - 1]].append(image[mask == value].mean(0))
    means = np.array([np.mean(colours[n], 0) for n in names])
    assert np.ptp(means, axis=0).max() < 40, means  # per-class means within noise (colour-coded: ~180 apart)


def test_bench_world_runs_datagen_on_the_world(world, tmp_path):
    """`make bench-world` at its smallest size on the reduced world: the unchanged `datagen run`, `eval
    grounding`, `eval labels` and `eval zs3` (both modes) run on it and the table's numbers come back."""
    preset, _, _ = world
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "benchmarks/world.py", "--out", str(tmp_path), "--models", str(preset),
                             "--n", "8", "--eval-n", "4", "--real-train", "16", "--real-val", "8", "--zs3-steps", "2"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"]["oracle"].endswith("maskrcnn.safetensors")
    assert sum(json.loads(p.read_text())["planned"] for p in (tmp_path / "run" / "data").glob("*.stats.json")) == 8
    assert report["phase_a"]["planned"] == 16 and 0 <= report["world"]["oracle_miou_rendered"] <= 1
    assert set(report["zs3"]) == {"real-seen", "real-seen+synthetic"}
    for metrics in report["zs3"].values():
        assert 0 <= metrics["miou_seen"] <= 1, metrics
    assert set(report["labels"]) == {"grounding", "attention", "consensus"}
    for scores in report["labels"].values():
        assert 0 <= scores["absent_pixels"] <= 1 and set(scores) >= {"miou_seen", "one_class", "multi_class"}
    assert set(report["times"]) == {"world build", "run (A+B+C)", "eval grounding", "eval labels",
                                    "eval zs3 real-seen", "eval zs3 real-seen+synthetic"}


def test_bench_schedulers_runs_each_setting_on_the_world(world, tmp_path):
    """`make bench-schedulers` at its smallest size on the reduced world: the reference (DDIM) at two seeds and
    DPM-Solver++, every phase with its setting: phase A's samples carry the solver's own capture timestep (which
    phase B recomputes features at), and the table holds each setting's scores, seconds and verdict."""
    preset, _, _ = world
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "benchmarks/schedulers.py", "--out", str(tmp_path), "--models",
                             str(preset), "--setting", "ddim:2", "--setting", "dpmsolver++:2", "--noise-seed", "1",
                             "--n", "2", "--eval-n", "2", "--real-val", "2"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = report["rows"]
    assert [(r["scheduler"], r["steps"], r["seed"], r["capture_timestep"]) for r in rows] == [
        ("ddim", 2, 0, 1), ("dpmsolver++", 2, 0, 500), ("ddim", 2, 1, 1)]
    for r in rows:
        assert r["s_per_image"] > 0 and all(0 <= r[m] <= 1 for m in ("protocol1_seen", "labels_seen")), r
        with tarfile.open(next((tmp_path / f"{r['scheduler']}-2-seed{r['seed']}" / "oracle").glob("*.tar"))) as tar:
            sample = next(m for m in tar.getmembers() if m.name.endswith(".json"))
            assert json.loads(tar.extractfile(sample).read())["provenance"]["capture_timestep"] == r["capture_timestep"]
    noise, verdict = report["verdict"]["noise"], report["verdict"]["settings"]["dpmsolver++ 2"]
    assert set(noise) == {"protocol1_seen", "protocol1_unseen", "labels_seen", "labels_unseen"}
    assert all(v >= 0 for v in noise.values()) and isinstance(verdict["within_noise"], bool), report["verdict"]
    assert verdict["speedup"] == round(rows[0]["s_per_image"] / rows[1]["s_per_image"], 2)


def test_world_preset_without_its_section_is_a_config_error(tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text(yaml.safe_dump({k: v for k, v in PRESET.items() if k != "world"}))
    with pytest.raises(ConfigError, match="no `world:` section"):
        world_spec(load_preset(str(preset)), str(preset))
