"""`datagen eval zs3` on a small real set (issue 13): every input check passes before `--out` is claimed,
and the report's first and last training loss never share a step."""

import os

import pytest
from rich.console import Console
from rich.progress import Progress
from zs3_fixtures import make_voc

from pipeline.evaluate.zs3.config import load_segmenter_preset
from pipeline.evaluate.zs3.report import LOSS_WINDOW, loss_summary
from pipeline.evaluate.zs3.run import SETTINGS, Zs3Request, run_zs3
from stages.errors import DataError


def test_a_real_split_smaller_than_a_batch_claims_nothing_and_the_corrected_rerun_runs(tmp_path):
    real = make_voc(tmp_path / "VOC2012", n_train=2, n_val=1)
    out = tmp_path / "out"
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115

    def run(**preset):
        request = Zs3Request(vocab="voc", real=real, out=out, preset_name="tiny", device="cpu",
                             preset=load_segmenter_preset("tiny", preset))  # real-seen: real images only
        return run_zs3(request, console, Progress(console=console))

    with pytest.raises(DataError, match="2 images, fewer than one batch"):
        run()  # the tiny preset's batch is 8
    assert not out.exists()  # no settings.json: the folder is not claimed for these settings

    report = run(batch_size=2, steps=1)  # the corrected command, into the same --out
    assert (out / SETTINGS).is_file() and report["training"]["steps"] == 1
    assert report["zero_shot"] is True  # real training images only, their unseen pixels ignored


def test_first_and_last_loss_never_share_a_step():
    losses = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # fewer steps than two windows: each takes half
    summary = loss_summary(losses)
    assert summary["loss_window"] == 3 and summary["first_loss"] == 5.0 and summary["last_loss"] == 2.0
    assert loss_summary([2.0, 1.0]) | {"losses": None} == {
        "steps": 2, "loss_window": 1, "first_loss": 2.0, "last_loss": 1.0, "losses": None}
    assert loss_summary([2.0])["last_loss"] is None  # one step has no separate last loss
    assert loss_summary([])["first_loss"] is None
    long = loss_summary([float(i) for i in range(30)])
    assert long["loss_window"] == LOSS_WINDOW and long["first_loss"] == 2.0 and long["last_loss"] == 27.0
