"""One ZS3 evaluation: check the inputs, train the segmenter (resuming a checkpoint), score, report.

The output folder holds ``settings.json`` (what is being evaluated, written once every input check has
passed: it claims the folder for these settings), ``checkpoint.pt`` (model + optimiser, replaced
atomically every few steps) and finally ``report.json`` / ``report.txt``. The report says whether its
unseen scores are zero-shot: the synthetic datasets' manifests say whether their labels are.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

from pipeline.config import ConfigError, resolve_vocabulary
from pipeline.dataset.atomic import make_folder, write_json_atomic
from pipeline.dataset.shards import read_json_object
from pipeline.dataset.zero_shot import shards_zero_shot
from pipeline.evaluate.zs3.config import SegmenterPreset
from pipeline.evaluate.zs3.modes import MODES
from pipeline.evaluate.zs3.real import DEFAULT_SPLITS, RealSegmentation, detect_format, real_split
from pipeline.evaluate.zs3.report import build_report, write_report, zero_shot_note
from pipeline.evaluate.zs3.synthetic import check_synthetic, synthetic_stream, synthetic_urls
from pipeline.evaluate.zs3.train import (
    Processes,
    TrainState,
    batch_shares,
    evaluate,
    new_train_state,
    save_checkpoint,
    setup_processes,
    train,
    training_batches,
    wrap_for_processes,
)
from pipeline.evaluate.zs3.transforms import eval_transform, train_transform
from stages.errors import DataError
from stages.segmenter import build_segmenter
from stages.vocab import Vocabulary

SETTINGS, CHECKPOINT, REPORT = "settings.json", "checkpoint.pt", "report.json"


@dataclass(frozen=True)
class Zs3Request:
    vocab: str
    real: Path
    out: Path
    preset_name: str
    preset: SegmenterPreset
    synthetic: str | None = None
    mode: str | None = None
    real_format: str = "auto"
    train_split: str | None = None
    val_split: str | None = None
    device: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class Zs3Inputs:
    """The checked inputs of one evaluation: what is trained on and scored, by which processes."""

    vocabulary: Vocabulary
    mode: str
    root: Path  # the real data's folder
    fmt: str  # voc or coco
    train_name: str
    val_name: str
    val: RealSegmentation
    real_train: RealSegmentation | None  # None when no real images are trained on
    urls: list[str] | None  # the synthetic shards; None without --synthetic
    procs: Processes

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary.classes) + 1  # background too


def resolve_mode(mode: str | None, synthetic: str | None) -> str:
    """The mode asked for, or the one the inputs imply (real seen + synthetic when shards are given)."""
    mode = mode or ("real-seen+synthetic" if synthetic else "real-seen")
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, not '{mode}'")
    if "synthetic" in mode and not synthetic:
        raise ConfigError(f"--mode {mode} needs --synthetic (a dataset folder or shard list)")
    if mode == "real-seen" and synthetic:
        raise ConfigError("--mode real-seen trains on real images only; drop --synthetic or choose another mode")
    return mode


def _check_out(out: Path, fingerprint: str) -> dict | None:
    """The finished report of this same evaluation, None if there is work to do; refuses other folders."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    if not (out / SETTINGS).is_file():
        raise ConfigError(f"{out} exists, is not empty and holds no ZS3 evaluation; choose another --out")
    old = _read_json(out / SETTINGS, "choose another --out or delete that folder").get("fingerprint")
    if old != fingerprint:
        raise ConfigError(f"{out} holds an evaluation with other settings (fingerprint {old}, this one "
                          f"{fingerprint}); choose another --out or delete that folder")
    return (_read_json(out / REPORT, "delete it and rerun: the evaluation is redone from the last checkpoint")
            if (out / REPORT).is_file() else None)


def _read_json(path: Path, remedy: str) -> dict:
    """A JSON object this command wrote; a damaged one is an input error naming the file and the remedy."""
    try:
        return read_json_object(path)
    except ValueError as err:
        raise DataError(f"{path} is damaged ({err}); {remedy}") from err


def _resume(state: TrainState, path: Path, device: torch.device, fingerprint: str) -> None:
    """Continue from ``path``: a checkpoint this evaluation wrote (its fingerprint), else one line. It is
    loaded with ``weights_only``: a file that would run code when unpickled is refused, never run."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        found = checkpoint.get("fingerprint") if isinstance(checkpoint, dict) else None
        if found != fingerprint:
            raise ValueError(f"its fingerprint is {found}, this evaluation's {fingerprint}")
        state.load(checkpoint)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, TypeError, EOFError, OSError) as err:
        reason = "torch.load with weights_only refuses it: not tensors and plain values" \
            if isinstance(err, pickle.UnpicklingError) else (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path} is not a checkpoint of this evaluation ({reason}); delete it to train from "
                        "the start") from err


def _real_location(request: Zs3Request) -> tuple[Path, str, str, str]:
    """The real data's folder, format and train / val split names; a bad format or folder is one line."""
    root = request.real.expanduser()
    fmt = detect_format(root) if request.real_format == "auto" else request.real_format
    if fmt not in DEFAULT_SPLITS:
        raise ConfigError(f"--real-format must be auto, voc or coco, not '{fmt}'")
    train_name = request.train_split or DEFAULT_SPLITS[fmt][0]
    val_name = request.val_split or DEFAULT_SPLITS[fmt][1]
    if not root.is_dir():
        raise DataError(f"--real {root}: no such folder")
    return root, fmt, train_name, val_name


def _check_inputs(request: Zs3Request) -> Zs3Inputs:
    """Read and check every input before anything is written: vocabulary, mode, real and synthetic data,
    the processes and whether each fills its batch."""
    vocabulary = resolve_vocabulary(request.vocab)
    mode = resolve_mode(request.mode, request.synthetic)
    preset = request.preset
    root, fmt, train_name, val_name = _real_location(request)
    unseen = frozenset(c.id for c in vocabulary.unseen)
    val = real_split(root, fmt, val_name, vocabulary, eval_transform())
    real_train = (real_split(root, fmt, train_name, vocabulary, train_transform(preset), ignored_ids=unseen)
                  if mode.startswith("real") else None)
    urls = synthetic_urls(request.synthetic) if request.synthetic else None
    if urls is not None:
        check_synthetic(urls, vocabulary, request.synthetic)
    procs = setup_processes(request.device)
    if urls is not None and len(urls) < procs.world:
        raise DataError(f"{len(urls)} synthetic shards cannot feed {procs.world} processes")
    batch_shares(preset, procs.world, len(real_train) if real_train is not None else None, urls is not None)
    return Zs3Inputs(vocabulary, mode, root, fmt, train_name, val_name, val, real_train, urls, procs)


def _settings(request: Zs3Request, inputs: Zs3Inputs) -> dict:
    """What is being evaluated, as settings.json records it (not the device or the number of processes)."""
    return {"mode": inputs.mode, "vocabulary": inputs.vocabulary.to_dict(), "segmenter": request.preset_name,
            "preset": request.preset.model_dump(mode="json"), "real": str(inputs.root.resolve()),
            "real_format": inputs.fmt, "train_split": inputs.train_name if inputs.real_train else None,
            "val_split": inputs.val_name, "synthetic": inputs.urls, "seed": request.seed}


def _fingerprint(settings: dict) -> str:
    """Names these settings in settings.json, the checkpoint and the report: 16 hex digits of their sha256."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _claim_out(out: Path, settings: dict, fingerprint: str) -> None:
    """Make the output folder and claim it for these settings (``settings.json``)."""
    make_folder(out)
    write_json_atomic(out / SETTINGS, {**settings, "fingerprint": fingerprint})


def _start_training(request: Zs3Request, inputs: Zs3Inputs, settings: dict, fingerprint: str,
                    console: Console) -> TrainState:
    """The segmenter and its optimiser, fresh or from this evaluation's checkpoint. Rank 0 claims the
    output folder first: every input is checked by now."""
    preset, procs = request.preset, inputs.procs
    torch.manual_seed(request.seed)
    model = build_segmenter(preset.architecture, inputs.num_classes, preset.backbone_weights, preset.aux_loss)
    if procs.main:
        _claim_out(request.out, settings, fingerprint)
    model = wrap_for_processes(model.to(procs.device), procs)
    state = new_train_state(model, preset, procs.device, inputs.num_classes)
    checkpoint_path = request.out / CHECKPOINT
    if checkpoint_path.is_file():
        _resume(state, checkpoint_path, procs.device, fingerprint)
        if procs.main:
            console.print(f"resuming from step {state.step} of {preset.steps} ({checkpoint_path})")
    return state


def _batches(request: Zs3Request, inputs: Zs3Inputs, step: int) -> Iterator:
    """This process's training batches from ``step`` on; a resume draws new augmentations and order."""
    torch.manual_seed(request.seed * 1000 + inputs.procs.rank + step)  # augmentations
    synthetic = (synthetic_stream(inputs.urls, inputs.vocabulary, train_transform(request.preset),
                                  request.seed + step, request.preset.shuffle_buffer)
                 if inputs.urls is not None else None)
    return training_batches(inputs.real_train, synthetic, request.preset, inputs.procs, request.seed + step)


def _train_with_progress(request: Zs3Request, inputs: Zs3Inputs, state: TrainState, fingerprint: str,
                         progress: Progress) -> float:
    """Train to the preset's steps under a bar, rank 0 saving a checkpoint every ``checkpoint_every`` steps
    and at the end; the seconds training took."""
    preset, procs = request.preset, inputs.procs
    checkpoint_path = request.out / CHECKPOINT
    batches = _batches(request, inputs, state.step)
    progress.start()  # only now: an input error above is printed alone, with no bar around it
    task = progress.add_task("training", total=preset.steps, completed=state.step, visible=procs.main)

    def on_step(s):
        progress.update(task, completed=s.step, description=f"training (loss {s.losses[-1]:.3f})")
        if procs.main and (s.step % preset.checkpoint_every == 0 or s.step == preset.steps):
            save_checkpoint(s, checkpoint_path, fingerprint)

    train_started = time.time()
    train(state, batches, preset.steps, procs.device, on_step)
    return time.time() - train_started


def _score(request: Zs3Request, inputs: Zs3Inputs, state: TrainState, progress: Progress) -> torch.Tensor:
    """The confusion matrix of the trained segmenter on the validation split (this process's share, summed)."""
    procs, val = inputs.procs, inputs.val
    eval_task = progress.add_task("evaluating", total=len(range(procs.rank, len(val), procs.world)),
                                  visible=procs.main, unit="images")
    return evaluate(state.model, val, inputs.num_classes, procs, request.preset.workers,
                    lambda: progress.advance(eval_task))


def _report_context(request: Zs3Request, inputs: Zs3Inputs, fingerprint: str, train_seconds: float,
                    started: float) -> dict:
    """What the report says besides the scores: zero-shot status, segmenter, data, device and times."""
    preset, procs, urls, real_train = request.preset, inputs.procs, inputs.urls, inputs.real_train
    synthetic_labels = shards_zero_shot(urls) if urls is not None else None
    zero_shot, note = zero_shot_note(synthetic_labels)
    return {
        "zero_shot": zero_shot, "zero_shot_note": note,
        "segmenter": {"preset": request.preset_name, **preset.model_dump(mode="json")},
        "data": {"real": str(inputs.root), "real_format": inputs.fmt, "val_split": inputs.val_name,
                 "val_images": len(inputs.val), "train_split": inputs.train_name if real_train else None,
                 "train_images": len(real_train) if real_train else 0,
                 "unseen_ignored_in_real_training":
                     sorted(c.name for c in inputs.vocabulary.unseen) if real_train else [],
                 "synthetic": request.synthetic, "synthetic_shards": len(urls) if urls else 0,
                 "synthetic_labels_zero_shot": synthetic_labels or {}},
        "device": str(procs.device), "processes": procs.world, "fingerprint": fingerprint,
        "train_seconds": round(train_seconds, 2), "seconds": round(time.time() - started, 2),
    }


def run_zs3(request: Zs3Request, console: Console, progress: Progress) -> dict | None:
    """Train, evaluate and write the report; returns it (None in the other torchrun processes than rank 0).
    A rerun resumes, or returns the finished report."""
    started = time.time()
    inputs = _check_inputs(request)
    settings = _settings(request, inputs)
    fingerprint = _fingerprint(settings)
    finished = _check_out(request.out, fingerprint)
    if finished is not None:
        console.print(f"[green]evaluation is complete[/]: report in {request.out / REPORT}")
        return finished
    state = _start_training(request, inputs, settings, fingerprint, console)
    train_seconds = _train_with_progress(request, inputs, state, fingerprint, progress)
    conf = _score(request, inputs, state, progress)
    context = _report_context(request, inputs, fingerprint, train_seconds, started)
    report = build_report(conf.numpy(), inputs.vocabulary, inputs.mode, state.losses, context)
    if not inputs.procs.main:
        return None
    progress.stop()
    write_report(report, request.out, console)
    return report
