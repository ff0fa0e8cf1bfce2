"""Exports of a finished dataset to other formats (``datagen export``): COCO instances JSON."""
