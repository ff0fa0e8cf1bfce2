"""The inspection commands: `datagen show`, `validate`, `stats`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from pipeline.cli.app import app
from pipeline.cli.progress import progress_bar

DatasetDir = Annotated[str, typer.Argument(help="A datagen output folder or object-store URL (the --out of a run).",
                                           show_default=False)]
MAX_LISTED = 50  # problems printed by validate; the count says how many more


@app.command()
def show(out: DatasetDir,
         n: Annotated[int, typer.Option(help="Samples on the sheet (the first ones in shard order, or with "
                                            "--random drawn at random).")] = 16,
         class_name: Annotated[str | None,
                               typer.Option("--class", help="Only samples whose mask labels this class.")] = None,
         random: Annotated[bool, typer.Option("--random", help="Draw the samples at random (with --seed) "
                                                                "instead of taking the first ones.")] = False,
         seed: Annotated[int, typer.Option(help="The seed of --random: the same seed draws the same samples.")] = 0,
         save: Annotated[str | None, typer.Option(help="Where to write the PNG, a path or URL "
                                                      "[default: OUT/show.png].")] = None):
    """Write a contact sheet PNG of samples, each image beside its mask, with a legend; prints its path."""
    from pipeline.dataset.location import location
    from pipeline.inspect.folder import open_output
    from pipeline.inspect.show import show as write_sheet

    folder = location(out)
    print(write_sheet(open_output(folder), n, class_name, location(save) if save else folder / "show.png",
                      seed if random else None))


@app.command()
def validate(out: DatasetDir):
    """Check every shard against the format, its stats and the manifest; exit 1 naming shard and key."""
    from pipeline.dataset.location import location
    from pipeline.inspect.validate import validate_output

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    with progress_bar(console, transient=True) as progress:
        problems, checked = validate_output(location(out), progress)
    for problem in problems[:MAX_LISTED]:
        print(problem)
    read = ", ".join(f"{c['samples']} samples in {c['shards']} {'oracle' if phase == 'oracle' else 'dataset'} "
                     "shards" for phase, c in checked.items())
    if problems:
        more = f" ({len(problems) - MAX_LISTED} more not listed)" if len(problems) > MAX_LISTED else ""
        console.print(f"[red]invalid:[/] {len(problems)} problems{more} in {out} ({read} read)")
        raise typer.Exit(1)
    console.print(f"[green]valid:[/] {read}; manifest, classes and stats agree with the shards")


@app.command()
def stats(out: DatasetDir, json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False):
    """Samples, per-class pixel share and instances, seen vs unseen, failures, image and shard sizes."""
    from pipeline.dataset.location import location
    from pipeline.inspect.folder import open_output
    from pipeline.inspect.stats import dataset_stats, print_stats

    ds = open_output(location(out))
    with progress_bar(Console(stderr=True), unit="shards", transient=True) as progress:
        bar = progress.add_task("stats", total=len(ds.shards))
        counted = dataset_stats(ds, lambda k: progress.advance(bar, k))
    print_stats(counted, Console(soft_wrap=True), as_json=json)
