"""`datagen eval zs3` on constructed VOC-format data and synthetic shards, on CPU with the tiny segmenter."""

import json
import os
import subprocess
import sys

import pytest
import torch
from rich.console import Console
from rich.progress import Progress
from zs3_fixtures import corrupt_member, make_synthetic, make_voc

import pipeline.evaluate.zs3.run as zs3_run
from pipeline.evaluate.zs3.config import load_segmenter_preset
from pipeline.evaluate.zs3.run import Zs3Request, run_zs3

# One intra-op thread: on a CPU shared with other jobs, torch's thread pool spins and stalls each step;
# a single thread keeps these runs short wherever they run.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")


def datagen(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "eval", "zs3", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **ONE_THREAD, **(env or {})},
                          timeout=600)


@pytest.fixture
def in_process(monkeypatch, capsys):
    """The same command through ``pipeline.cli.main`` in this process (no interpreter start-up)."""
    from pipeline.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["datagen", "eval", "zs3", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs3")
    return make_voc(root / "VOCdevkit" / "VOC2012"), make_synthetic(root / "synthetic")


@pytest.fixture(scope="module")
def paper_run(data, tmp_path_factory):
    voc, synthetic = data
    out = tmp_path_factory.mktemp("zs3-out") / "paper"
    result = datagen("--vocab", "voc", "--real", voc, "--synthetic", synthetic, "--segmenter", "tiny",
                     "--device", "cpu", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_report_has_the_scores_classes_and_mode(paper_run):
    out, result = paper_run
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "real-seen+synthetic" and "paper" in report["mode_description"]
    assert set(report["metrics"]) == {"miou_seen", "miou_unseen", "hiou", "miou", "pixel_accuracy"}
    classes = {c["name"]: c for c in report["classes"]}
    assert len(classes) == 21 and classes["background"]["split"] == "seen" and classes["sheep"]["split"] == "unseen"
    present = {"background", "aeroplane", "car", "person", "sheep"}
    assert {n for n, c in classes.items() if c["gt_pixels"]} == present
    assert set(report["absent_classes"]) == set(classes) - present
    assert all(classes[n]["iou"] is None for n in report["absent_classes"])
    assert report["data"]["train_images"] == 16 and report["data"]["val_images"] == 8
    assert report["data"]["synthetic_shards"] == 2 and "sheep" in report["data"]["unseen_ignored_in_real_training"]
    conf = torch.tensor(report["confusion_matrix"])
    assert int(conf.sum()) == sum(c["gt_pixels"] for c in report["classes"])
    m = report["metrics"]
    assert m["miou_seen"] is not None and m["miou_unseen"] is not None
    assert 0 <= m["hiou"] <= max(m["miou_seen"], m["miou_unseen"])
    assert "mIoU seen" in (out / "report.txt").read_text()
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["metrics"] == m


def test_training_lowers_the_loss(paper_run):
    training = json.loads((paper_run[0] / "report.json").read_text())["training"]
    assert training["steps"] == len(training["losses"]) == 30
    assert training["last_loss"] < 0.7 * training["first_loss"]


def test_rerun_returns_the_finished_report(paper_run, data, in_process):
    out, _ = paper_run
    voc, synthetic = data
    datagen = in_process
    result = datagen("--vocab", "voc", "--real", voc, "--synthetic", synthetic, "--segmenter", "tiny",
                     "--device", "cpu", "--out", out)
    assert result.returncode == 0 and "evaluation is complete" in result.stderr
    other = datagen("--vocab", "voc", "--real", voc, "--synthetic", synthetic, "--segmenter", "tiny",
                    "--device", "cpu", "--out", out, "--steps", "3")
    assert other.returncode == 2 and "other settings" in other.stderr


@pytest.mark.parametrize("mode", ["real-seen", "synthetic"])
def test_other_modes_say_what_they_trained_on(mode, data, tmp_path, in_process):
    voc, synthetic = data
    extra = ["--synthetic", synthetic] if mode == "synthetic" else []
    result = in_process("--real", voc, *extra, "--mode", mode, "--segmenter", "tiny", "--steps", "3", "--device", "cpu",
                     "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["mode"] == mode and report["training"]["steps"] == 3
    assert report["data"]["train_images"] == (16 if mode == "real-seen" else 0)
    assert report["data"]["synthetic_shards"] == (2 if mode == "synthetic" else 0)


def test_an_interrupted_run_resumes_from_its_checkpoint(data, tmp_path, monkeypatch):
    voc, synthetic = data
    preset = load_segmenter_preset("tiny", {"steps": 6, "checkpoint_every": 3, "class_balance": 0.5})
    request = Zs3Request(vocab="voc", real=voc, out=tmp_path / "out", preset_name="tiny", preset=preset,
                         synthetic=str(synthetic), device="cpu")
    saved = zs3_run.save_checkpoint

    def save_then_stop(state, path, fingerprint):
        saved(state, path, fingerprint)
        raise KeyboardInterrupt

    monkeypatch.setattr(zs3_run, "save_checkpoint", save_then_stop)
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115
    with pytest.raises(KeyboardInterrupt):
        run_zs3(request, console, Progress(console=console))
    first = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert first["step"] == 3 and not (tmp_path / "out" / "report.json").exists()
    monkeypatch.setattr(zs3_run, "save_checkpoint", saved)
    trained = []  # (step, weights) where each call of train began, and the step it ended at
    train = zs3_run.train

    def recording_train(state, batches, steps, device, on_step):
        began = (state.step, {k: v.clone() for k, v in state.model.state_dict().items()})
        train(state, batches, steps, device, on_step)
        trained.append((*began, state.step))

    monkeypatch.setattr(zs3_run, "train", recording_train)
    report = run_zs3(request, console, Progress(console=console))
    [(began, weights, ended)] = trained  # a restart would begin at step 0 with fresh weights: as deterministic,
    assert (began, ended) == (3, 6)      # it would log the same first losses
    assert weights.keys() == first["model"].keys() and all(torch.equal(weights[k], first["model"][k]) for k in weights)
    assert report["training"]["steps"] == 6 and report["training"]["losses"][:3] == first["losses"]
    assert (tmp_path / "out" / "report.json").exists()
    last = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)  # the balanced loss's counts go on
    assert last["pixels"].sum() > 1.5 * first["pixels"].sum() > 0


def bad(result, *words):
    lines = result.stderr.splitlines()  # exactly one line: not even a blank one left by a progress bar
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_bad_input_is_one_line_and_exit_2(data, tmp_path, in_process):
    voc, synthetic = data
    out = tmp_path / "out"
    common = ["--segmenter", "tiny", "--device", "cpu", "--out", out]
    datagen = in_process
    bad(datagen("--real", tmp_path / "nowhere", *common), "no such folder")
    (tmp_path / "plain").mkdir()
    bad(datagen("--real", tmp_path / "plain", *common), "neither a VOC folder")
    bad(datagen("--real", voc, "--mode", "synthetic", *common), "needs --synthetic")
    vocab = tmp_path / "odd.yaml"
    vocab.write_text("classes: [sheep, unicorn]\n")
    bad(datagen("--real", voc, "--vocab", vocab, *common), "unicorn")
    (tmp_path / "empty" / "data").mkdir(parents=True)
    bad(datagen("--real", voc, "--synthetic", tmp_path / "empty", *common), "no finished shards")
    empty_voc = make_voc(tmp_path / "VOC", n_train=2, n_val=1)
    (empty_voc / "ImageSets" / "Segmentation" / "val.txt").write_text("")
    bad(datagen("--real", empty_voc, *common), "lists no images")
    bad(datagen("--real", voc, "--segmenter", "huge", "--out", out), "unknown segmenter preset")
    assert not out.exists()


def test_damaged_output_files_and_shards_are_one_line_and_exit_2(data, tmp_path, in_process):
    voc, _ = data
    synthetic = make_synthetic(tmp_path / "synthetic", shards=2, per_shard=4)
    corrupt_member(synthetic / "data" / "shard-000001.tar", "000000000006", "seg.png")
    common = ["--real", voc, "--synthetic", synthetic, "--segmenter", "tiny", "--device", "cpu", "--steps", "4"]
    bad(in_process(*common, "--out", tmp_path / "out"), "shard-000001.tar", "000000000006", "seg.png")
    assert (tmp_path / "out" / "settings.json").is_file()  # what was evaluated stays; nothing else was written
    (tmp_path / "out" / "settings.json").write_text('{"fingerprint": ')
    bad(in_process(*common, "--out", tmp_path / "out"), "settings.json is damaged")


def test_standard_preset_without_cached_backbone_weights_fails_fast(data, tmp_path):
    voc, _ = data
    result = datagen("--real", voc, "--device", "cpu", "--out", tmp_path / "out",
                     env={"DATAGEN_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch")})
    bad(result, "ImageNet backbone weights", "resnet101")
    assert not (tmp_path / "out").exists()


def test_torchrun_trains_with_ddp_and_scores_the_whole_val_set(data, paper_run, tmp_path):
    voc, synthetic = data
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "pipeline.cli", "eval", "zs3", "--real", str(voc),
                             "--synthetic", str(synthetic), "--segmenter", "tiny", "--steps", "2", "--device", "cpu",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, **ONE_THREAD}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 reports
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    single = json.loads((paper_run[0] / "report.json").read_text())
    assert report["processes"] == 2 and report["training"]["steps"] == 2
    # each process scored half of the images; the summed matrix covers every pixel once
    assert [c["gt_pixels"] for c in report["classes"]] == [c["gt_pixels"] for c in single["classes"]]
