"""`datagen export coco`: a dataset as COCO instances JSON and image files."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.app import app, console
from pipeline.cli.progress import progress_bar
from stages.errors import ConfigError, DatagenError

RunDir = Annotated[str, typer.Argument(metavar="RUN", show_default=False,
                                       help="A datagen output folder or object-store URL (the --out of a run).")]
export_app = typer.Typer(help="Write a dataset in another format (COCO instances JSON).", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command()
def coco(run: RunDir,
         out: Annotated[str, typer.Option(metavar="DIR", show_default=False,
                                          help="A local folder, new, empty or an earlier export (replaced): "
                                               "instances.json and images/.")],
         category_ids: Annotated[str, typer.Option(help="auto (COCO's ids when every class is a COCO category, "
                                                        "else the dataset's), coco, or dataset (the seg.png "
                                                        "ids).")] = "auto",
         phase: Annotated[str, typer.Option(help="label: the dataset (data/, phase C); oracle: phase A's "
                                                 "oracle-labelled shards (oracle/), the oracle's top instance "
                                                 "of each prompted class.")] = "label"):
    """COCO instances JSON of the dataset's samples (one annotation per connected object), with the images."""
    from pipeline.dataset.layout import Phase
    from pipeline.export.coco import ANNOTATIONS, check_out, export_coco
    from pipeline.inspect.folder import open_output

    check_out(out)  # before the dataset is read: a bad --out costs nothing
    if phase not in (Phase.LABEL, Phase.ORACLE):
        raise ConfigError(f"--phase must be label or oracle, not '{phase}'")
    ds = open_output(run, Phase(phase))
    total = sum(ds.counted_stats(shard)["written"] for shard in ds.shards)
    with progress_bar(console, unit="images") as progress:
        task = progress.add_task("export coco", total=total)
        try:
            result = export_coco(ds, out, category_ids, advance=lambda: progress.advance(task))
        except DatagenError:  # the error alone is printed: no half-drawn bar above it
            progress.remove_task(task)
            raise
        except KeyboardInterrupt:
            progress.remove_task(task)
            console.print(f"interrupted: {out} is as it was")
            raise typer.Exit(130) from None
    ids = "COCO's category ids" if result.category_ids == "coco" else "the dataset's class ids as category ids"
    console.print(f"exported {result.images} images and {result.annotations} instances with {ids}", highlight=False)
    print(result.out / ANNOTATIONS)
