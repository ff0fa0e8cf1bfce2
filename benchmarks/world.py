"""The proof on a miniature world: build (or reuse) the world, run the unchanged datagen commands on it
and print one table: the oracle on rendered ground truth, how often it finds the prompted class in
generated images, Protocol I seen / unseen mIoU of every labeler (grounding, attention, consensus) on the same
test images, every labeler against the rendered truth of the validation scenes (`eval labels`: seen /
unseen mIoU, one- vs multi-class scenes, absent-class pixels), ZS3 seen / unseen / hIoU for `real-seen`
and `real-seen+synthetic`, and the CPU minutes of each step.

    python benchmarks/world.py --out runs/bench-world
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import load_preset, resolve_vocabulary
from pipeline.local_sources import world_spec
from testbed.toy_shapes import write_scene_dataset

console = Console(stderr=True)
ROOT = Path(__file__).resolve().parents[1]


def datagen(*args: str) -> tuple[dict, float, float]:
    """Run one datagen command as a user does; (its JSON result, wall seconds, CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    console.print("$ datagen " + " ".join(args), highlight=False)
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"datagen {args[0]} failed with exit code {result.returncode}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(result.stdout.strip().splitlines()[-1]), time.time() - started, cpu


def run(out: Path, models: str, n: int, eval_n: int, real_train: int, real_val: int, zs3_steps: int | None,
        seed: int) -> dict:
    vocab_name = world_spec(load_preset(models), models).vocab
    vocab = resolve_vocabulary(vocab_name)
    times: dict[str, dict] = {}

    def step(name: str, *args: str) -> dict:
        result, wall, cpu = datagen(*args)
        times[name] = {"wall_min": round(wall / 60, 2), "cpu_min": round(cpu / 60, 2)}
        return result

    world = step("world build", "world", "build", "--models", models)
    dataset = out / "run"
    step("run (A+B+C)", "run", "--vocab", vocab_name, "--models", models, "--n", str(n), "--out", str(dataset),
         "--seed", str(seed), "--device", "cpu")
    protocol1 = step("eval grounding", "eval", "grounding", "--vocab", vocab_name, "--models", models,
                     "--out", str(dataset), "--n", str(eval_n), "--seed", str(seed), "--device", "cpu",
                     "--labeler", "all")
    real = write_scene_dataset(out / "real", [c.name for c in vocab.classes], real_train, real_val,
                               load_preset(models).image_size, seed=seed + 1000)
    labels = step("eval labels", "eval", "labels", "--real", str(real), "--vocab", vocab_name, "--models", models,
                  "--out", str(dataset), "--seed", str(seed), "--device", "cpu", "--labeler", "all")
    zs3 = {}
    for mode in ("real-seen", "real-seen+synthetic"):
        extra = (("--synthetic", str(dataset)) if "synthetic" in mode else ()) + (
            ("--steps", str(zs3_steps)) if zs3_steps else ())
        zs3[mode] = step(f"eval zs3 {mode}", "eval", "zs3", "--real", str(real), "--vocab", vocab_name,
                         "--mode", mode, *extra, "--segmenter", "world",
                         "--out", str(out / f"zs3-{mode.replace('+', '-')}"), "--device", "cpu",
                         "--seed", str(seed))["metrics"]
    oracle_stats = [json.loads(p.read_text()) for p in sorted((dataset / "oracle").glob("*.stats.json"))]
    planned = sum(s["planned"] for s in oracle_stats)
    written = sum(s["written"] for s in oracle_stats)
    return {
        "world": {"folder": world["folder"], "oracle_miou_rendered": world["oracle_on_rendered"]["miou"],
                  "oracle_per_class_iou": world["oracle_on_rendered"]["per_class_iou"],
                  "generated_found": world["generated"]["oracle_finds_prompted_class"],
                  "generated_top": world["generated"]["oracle_top_is_prompted_class"],
                  "oracle_top_is_true_class": world["oracle_top_is_true_class"],
                  "unet_text_gap_percent": world["unet_text_gap_percent"],
                  "build_times": world["times"], "losses": {k: [v["first"], v["last"]]
                                                            for k, v in world["losses"].items()}},
        "phase_a": {"planned": planned, "labelled": written,
                    "oracle_finds_prompted": written / planned if planned else None},
        "protocol1": {labeler: {"miou_seen": scores["miou_seen"], "miou_unseen": scores["miou_unseen"],
                                "per_class": {c["name"]: c["iou"][labeler] for c in protocol1["classes"]},
                                **{group: protocol1["by_classes"][group]["scores"][labeler]
                                   for group in protocol1["by_classes"]}}
                      for labeler, scores in protocol1["scores"].items()},
        "labels": _labels_vs_truth(labels),
        "zs3": {mode: {k: m[k] for k in ("miou_seen", "miou_unseen", "hiou")} for mode, m in zs3.items()},
        "times": times, "n": n, "eval_n": eval_n, "real_train": real_train, "real_val": real_val,
        "zs3_steps": zs3_steps, "models": models,
    }


def _labels_vs_truth(report: dict) -> dict:
    """Per labeler, from `eval labels`: mIoU seen / unseen, absent-class pixels, and mIoU seen / unseen on
    one-class and on multi-class scenes."""
    groups = report["by_classes"]
    return {name: {**{k: s[k] for k in ("miou_seen", "miou_unseen", "absent_pixels")},
                   **{group: groups[group]["scores"][name] for group in groups}}
            for name, s in report["scores"].items()}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _split(scores: dict) -> str:
    """'seen / unseen | seen / unseen' of the one-class and the multi-class images."""
    return " | ".join(f"{_fmt(scores[g]['miou_seen'])} / {_fmt(scores[g]['miou_unseen'])}"
                      for g in ("one_class", "multi_class"))


def table(report: dict) -> Table:
    t = Table(title="datagen on a miniature world")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("oracle mask mIoU on held-out rendered scenes", _fmt(report["world"]["oracle_miou_rendered"]))
    truth = report["world"]["oracle_top_is_true_class"]
    t.add_row("oracle's top detection is the true class: one-shape rendered scenes | their VAE round trips",
              f"{_fmt(truth['rendered'])} | {_fmt(truth['round_trip'])}")
    t.add_row("UNet text gap by timestep bucket, % (loss with another scene's caption over the right one)",
              " ".join(f"{v:+.1f}" for v in report["world"]["unet_text_gap_percent"].values()))
    t.add_row("phase A: generated samples the oracle labels (finds a prompted class)",
              _fmt(report["phase_a"]["oracle_finds_prompted"]))
    found = report["world"]["generated_found"]
    top = report["world"]["generated_top"]
    t.add_row("world build: the oracle's top detection is the prompted class (chance 0.1)",
              _fmt(sum(top.values()) / len(top)))
    t.add_row("world build: oracle finds the prompted class (one-class prompts, all classes)",
              _fmt(sum(found.values()) / len(found)))
    for labeler, scores in report["protocol1"].items():
        t.add_row(f"Protocol I mIoU seen / unseen ({labeler} vs oracle)",
                  f"{_fmt(scores['miou_seen'])} / {_fmt(scores['miou_unseen'])}")
        t.add_row(f"Protocol I seen / unseen: one-class | two-class prompts ({labeler})", _split(scores))
    for labeler, scores in report["labels"].items():
        t.add_row(f"labels vs truth, seen / unseen ({labeler})",
                  f"{_fmt(scores['miou_seen'])} / {_fmt(scores['miou_unseen'])}")
        t.add_row(f"labels vs truth, seen / unseen: one-class | two-class scenes ({labeler})", _split(scores))
        t.add_row(f"absent-class pixels ({labeler})", _fmt(scores["absent_pixels"]))
    for mode, m in report["zs3"].items():
        t.add_row(f"ZS3 {mode}: seen / unseen / hIoU",
                  f"{_fmt(m['miou_seen'])} / {_fmt(m['miou_unseen'])} / {_fmt(m['hiou'])}")
    for name, v in report["times"].items():
        t.add_row(f"CPU minutes: {name}", f"{v['cpu_min']:.1f} ({v['wall_min']:.1f} wall)")
    return t


def main(out: Annotated[Path, typer.Option(help="Working folder (dataset, real set, ZS3 runs).")]
         = Path("runs/bench-world"),
         models: Annotated[str, typer.Option(help="World preset (world, or a YAML file).")] = "world",
         n: Annotated[int, typer.Option(help="Samples in the synthetic dataset (phase C).")] = 800,
         eval_n: Annotated[int, typer.Option(help="Protocol I test images.")] = 200,
         real_train: Annotated[int, typer.Option(help="Rendered 'real' training images.")] = 800,
         real_val: Annotated[int, typer.Option(help="Rendered 'real' validation images.")] = 200,
         zs3_steps: Annotated[int | None, typer.Option(help="Segmenter steps per ZS3 mode (default: the world "
                                                           "segmenter preset's).")] = None,
         seed: Annotated[int, typer.Option(help="Run seed.")] = 0):
    """Build or reuse the world, run datagen on it and print the proof table (JSON on stdout)."""
    report = run(out, models, n, eval_n, real_train, real_val, zs3_steps, seed)
    console.print(table(report))
    print(json.dumps(report))


if __name__ == "__main__":
    typer.run(main)
