"""``python -m pipeline.cli``: the ``datagen`` command (torchrun starts ``eval zs3`` this way)."""

from pipeline.cli import main

main()
