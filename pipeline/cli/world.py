"""`datagen world build`: train the miniature world's models (testbed/world/) into the models cache."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.app import app, console
from pipeline.cli.progress import progress_bar

world_app = typer.Typer(help="The miniature world: shapes, and models trained here to stand in for SD and COCO's "
                             "Mask R-CNN.", no_args_is_help=True)
app.add_typer(world_app, name="world")


@world_app.command("build")
def build_command(
    models: Annotated[str, typer.Option(help="Model preset with a `world:` section (world, or a YAML file).")]
    = "world",
):
    """Build the world's VAE, UNet and oracle (once; a second call reuses them) and print its report:
    losses, part times, the oracle's mask IoU on held-out rendered scenes and how often it finds the
    prompted class in generated images. Prints the report as JSON on stdout."""
    from pipeline.config import default_cache_dir, load_preset
    from pipeline.local_sources import build, world_spec
    from testbed.world.build import REPORT, SAMPLES_DIR

    spec = world_spec(load_preset(models), models)
    cache = default_cache_dir()  # $DATAGEN_CACHE, as every command
    with progress_bar(console, unit="steps") as bar:
        tasks: dict[str, int] = {}

        def on_progress(part: str, done: int, total: int) -> None:
            if part not in tasks:
                tasks[part] = bar.add_task(f"world: {part}", total=total)
            bar.update(tasks[part], completed=done)

        folder, fresh = build(cache, spec, on_progress)
    report = json.loads((folder / REPORT).read_text())
    console.print(("built" if fresh else "already built") + f": {folder}", highlight=False)
    console.print(_table(report))
    console.print(f"sample grids (generated images over the oracle's masks): {folder / SAMPLES_DIR}", highlight=False)
    print(json.dumps({"folder": str(folder), "built_now": fresh, **report}))


def _table(report: dict) -> Table:
    oracle, generated = report["oracle_on_rendered"], report["generated"]
    table = Table(title="miniature world")
    for column in ("class", "oracle IoU (rendered)", "oracle finds (rendered)", "oracle finds prompted (generated)",
                   "top detection is prompted (generated)"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name in report["classes"]:
        table.add_row(name, f"{oracle['per_class_iou'].get(name, float('nan')):.3f}",
                      f"{oracle['found'].get(name, float('nan')):.2f}",
                      f"{generated['oracle_finds_prompted_class'][name]:.2f}",
                      f"{generated['oracle_top_is_prompted_class'][name]:.2f}")
    table.add_row("[bold]mean[/]", f"[bold]{oracle['miou']:.3f}[/]", "", f"[bold]{generated['mean']:.2f}[/]",
                  f"[bold]{generated['mean_top']:.2f}[/]")
    parts = ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in report["times"].items())
    losses = ", ".join(f"{k} {v['first']:.3f} -> {v['last']:.3f}" for k, v in report["losses"].items())
    top = report["oracle_top_is_true_class"]
    gap = ", ".join(f"{t} {v:+.1f}%" for t, v in report["unet_text_gap_percent"].items())
    table.caption = (f"oracle's top detection is the true class on one-shape scenes: rendered {top['rendered']:.2f}, "
                     f"VAE round trip {top['round_trip']:.2f}; UNet text gap by timestep: {gap}; losses: {losses}; "
                     f"times: {parts}")
    return table
