"""Labels per scheduler on a miniature world: does sampling with fewer steps keep the labels?

For each setting (scheduler and steps) the unchanged datagen commands run on the world, every phase with that
setting, as a user who sets it in the preset gets it: `datagen run` (phase A's oracle samples and the grounding
module they train, then phase C's samples, whose shard seconds give the seconds per image), `datagen eval
grounding` (Protocol I: the grounding labeler against the oracle on generated images) and `datagen eval labels`
(the grounding labeler against the rendered truth of annotated scenes, inverted at the capture timestep). The
noise is measured as the paper's setting's spread over seeds: DDIM 50 again with each ``--noise-seeds`` seed
(its own phase A samples, training and test prompts). A setting keeps the labels when none of the four mIoUs
falls below DDIM 50's by more than that spread.

    python benchmarks/schedulers.py --out runs/bench-schedulers
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table
from world import datagen  # benchmarks/world.py: one datagen command as a user runs it

from pipeline.config import config_file, default_cache_dir, load_preset, resolve_vocabulary
from pipeline.dataset.layout import DATA_DIR
from pipeline.local_sources import built_world, world_spec
from stages.generate import make_scheduler
from testbed.toy_shapes import write_scene_dataset

console = Console(stderr=True)
SETTINGS = ("ddim:50", "dpmsolver++:20", "dpmsolver++:25", "unipc:20")
METRICS = ("protocol1_seen", "protocol1_unseen", "labels_seen", "labels_unseen")


def preset_file(models: str, scheduler: str, steps: int, sizes: dict, folder: Path) -> Path:
    """The world preset with ``scheduler`` and ``steps`` (and ``sizes``: bootstrap_n, train steps) as a YAML
    file: the same models (the world's cache folder is keyed by its ``world:`` section, which is unchanged)."""
    raw = yaml.safe_load(config_file("presets", models, "model preset").read_text())
    raw |= {"scheduler": scheduler, "steps": steps}
    if sizes.get("bootstrap_n"):
        raw["bootstrap_n"] = sizes["bootstrap_n"]
    if sizes.get("train_steps"):
        raw["train"] = {**raw["train"], "steps": sizes["train_steps"]}
    if isinstance(raw.get("world"), dict) and "vocab" in raw["world"]:  # a vocab file relative to where it was
        vocab = Path(raw["world"]["vocab"])
        raw["world"]["vocab"] = str(vocab.resolve()) if vocab.is_file() else raw["world"]["vocab"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{scheduler}-{steps}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def capture_timestep(world_folder: Path, scheduler: str, steps: int, capture_step: int) -> int:
    """The UNet timestep of the capture step under ``scheduler`` with ``steps`` (the world's betas)."""
    from diffusers import DDIMScheduler

    solver = make_scheduler(scheduler, DDIMScheduler.load_config(world_folder / "scheduler"))
    solver.set_timesteps(steps)
    return int(solver.timesteps[-capture_step])


def seconds_per_image(dataset: Path) -> float:
    """Phase C's model seconds per planned sample, from its shards' stats (generation, capture, labelling)."""
    stats = [json.loads(p.read_text()) for p in sorted((dataset / DATA_DIR).glob("*.stats.json"))]
    return sum(s["seconds"] for s in stats) / sum(s["planned"] for s in stats)


def measure(out: Path, models: str, vocab: str, real: Path, scheduler: str, steps: int, seed: int, n: int,
            eval_n: int, sizes: dict) -> dict:
    """One setting's run and scores."""
    name = f"{scheduler}-{steps}-seed{seed}"
    preset = preset_file(models, scheduler, steps, sizes, out / "presets")
    dataset = out / name
    started = time.time()
    common = ("--vocab", vocab, "--models", str(preset), "--out", str(dataset), "--seed", str(seed), "--device", "cpu")
    datagen("run", *common, "--n", str(n))
    protocol1, _, _ = datagen("eval", "grounding", *common, "--n", str(eval_n), "--labeler", "grounding")
    labels, _, _ = datagen("eval", "labels", "--real", str(real), *common, "--labeler", "grounding")
    p1, truth = protocol1["scores"]["grounding"], labels["scores"]["grounding"]
    return {"scheduler": scheduler, "steps": steps, "seed": seed, "s_per_image": round(seconds_per_image(dataset), 4),
            "protocol1_seen": p1["miou_seen"], "protocol1_unseen": p1["miou_unseen"],
            "labels_seen": truth["miou_seen"], "labels_unseen": truth["miou_unseen"],
            "absent_pixels": truth["absent_pixels"], "wall_min": round((time.time() - started) / 60, 2)}


def verdict(rows: list[dict]) -> dict:
    """DDIM 50's spread over seeds per metric (the noise: the reference's other seeds against its first, which is
    the first row), and per other setting whether every metric is within it of the reference and how much
    faster it samples."""
    base = rows[0]
    same = [r for r in rows[1:] if (r["scheduler"], r["steps"]) == (base["scheduler"], base["steps"])]
    spread = {m: max((abs(r[m] - base[m]) for r in same), default=None) for m in METRICS}
    kept = {}
    for r in rows[1:]:
        if r in same:
            continue
        drops = {m: round(base[m] - r[m], 4) for m in METRICS}
        within = None if None in spread.values() else all(drops[m] <= spread[m] for m in METRICS)
        kept[f"{r['scheduler']} {r['steps']}"] = {"drops": drops, "within_noise": within,
                                                  "speedup": round(base["s_per_image"] / r["s_per_image"], 2)}
    return {"noise": spread, "settings": kept}


def table(report: dict) -> Table:
    t = Table(title="labels per scheduler on the miniature world (grounding labeler)")
    for column in ("setting", "seed", "capture t", "s/image (phase C)", "Protocol I seen / unseen",
                   "labels vs truth seen / unseen", "absent px", "within noise"):
        t.add_column(column, justify="left" if column == "setting" else "right")
    verdicts = report["verdict"]["settings"]
    for r in report["rows"]:
        key = f"{r['scheduler']} {r['steps']}"
        within = verdicts.get(key, {}).get("within_noise") if r is not report["rows"][0] else None
        t.add_row(key, str(r["seed"]), str(r["capture_timestep"]), f"{r['s_per_image']:.3f}",
                  f"{r['protocol1_seen']:.3f} / {r['protocol1_unseen']:.3f}",
                  f"{r['labels_seen']:.3f} / {r['labels_unseen']:.3f}", f"{r['absent_pixels']:.3f}",
                  "-" if within is None else ("yes" if within else "no"))
    return t


def main(out: Annotated[Path, typer.Option(help="Working folder (one dataset per setting, the real set).")]
         = Path("runs/bench-schedulers"),
         models: Annotated[str, typer.Option(help="World preset (world, or a YAML file).")] = "world",
         settings: Annotated[list[str], typer.Option("--setting", help="SCHEDULER:STEPS, the first is the reference "
                                                     "(repeat the option).")] = list(SETTINGS),
         noise_seeds: Annotated[list[int], typer.Option("--noise-seed", help="Seeds the reference is run again "
                                                        "with, for the noise (repeat the option).")] = [1],  # noqa: B006
         n: Annotated[int, typer.Option(help="Phase C samples per setting (its seconds per image).")] = 64,
         eval_n: Annotated[int, typer.Option(help="Protocol I test images.")] = 200,
         real_val: Annotated[int, typer.Option(help="Rendered annotated scenes for eval labels.")] = 200,
         bootstrap_n: Annotated[int | None, typer.Option(help="Phase A samples (default: the preset's).")] = None,
         train_steps: Annotated[int | None, typer.Option(help="Phase B steps (default: the preset's).")] = None,
         seed: Annotated[int, typer.Option(help="Run seed of every setting.")] = 0):
    """Run each setting on the world (built or reused) and print the table (JSON on stdout)."""
    spec = world_spec(load_preset(models), models)
    world_folder = built_world(default_cache_dir(), spec)  # `datagen world build` first (make bench-schedulers does)
    vocab_name = spec.vocab
    vocab = resolve_vocabulary(vocab_name)
    image_size, capture_step = load_preset(models).image_size, load_preset(models).capture_step
    real = write_scene_dataset(out / "real", [c.name for c in vocab.classes], 1, real_val, image_size,
                               seed=seed + 1000)
    parsed = [(s.split(":")[0], int(s.split(":")[1])) for s in settings]
    # the reference, the first other setting, the reference's noise seeds, the rest (what is cut short still compares)
    runs = [(*parsed[0], seed), *[(*p, seed) for p in parsed[1:2]], *[(*parsed[0], s) for s in noise_seeds],
            *[(*p, seed) for p in parsed[2:]]]
    sizes = {"bootstrap_n": bootstrap_n or load_preset(models).bootstrap_n,
             "train_steps": train_steps or load_preset(models).train.steps}
    rows = []
    for scheduler, steps, run_seed in runs:
        row = measure(out, models, vocab_name, real, scheduler, steps, run_seed, n, eval_n, sizes)
        row["capture_timestep"] = capture_timestep(world_folder, scheduler, steps, capture_step)
        rows.append(row)
        console.print(row)
    report = {"rows": rows, "verdict": verdict(rows), "models": models, "n": n, "eval_n": eval_n,
              "real_val": real_val, **sizes}
    console.print(table(report))
    print(json.dumps(report))


if __name__ == "__main__":
    typer.run(main)
