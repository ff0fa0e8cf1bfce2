"""`datagen export coco`: a dataset's phase C shards (or phase A's) as COCO instances JSON plus the images.

``OUT/instances.json`` lists every sample as a COCO image (id = the sample index, ``file_name`` its
file in ``OUT/images/``, the shard's bytes unchanged) and every object as an annotation: a connected
component of a class's pixels in phase C (``instances.objects``), one of the oracle's instances in
phase A (``instances.oracle_objects``), with COCO's category ids where the classes are COCO's
(``categories.category_ids``). Streaming: one sample in memory at a time; the annotations go to a side
file while the images are listed, and are appended after them. The export is built in a temporary
folder beside OUT and renamed into place at the end, so OUT is absent, or an earlier export (which a new
one replaces), or the new one, always whole.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO

from pipeline.dataset.atomic import replace_folder
from pipeline.dataset.layout import Phase
from pipeline.dataset.location import is_remote, location, names
from pipeline.dataset.members import IMAGE_MEMBERS, check_mask, decode_json, decode_mask, open_image, sample_classes
from pipeline.export.categories import category_ids
from pipeline.export.instances import objects, oracle_objects
from pipeline.inspect.folder import BadSample, DatasetFolder
from stages.errors import ConfigError, DataError

ANNOTATIONS = "instances.json"
IMAGES = "images"
DESCRIPTION = "a datagen dataset's samples (datagen export coco)"  # info's first field: marks an export
OPENING = json.dumps({"info": {"description": DESCRIPTION}}, separators=(",", ":"))[:-2].encode()


@dataclass
class CocoExport:
    """What an export wrote: where, how many images and annotations, and which category ids it used."""

    out: Path
    images: int
    annotations: int
    category_ids: str  # coco (COCO's ids) or dataset (the seg.png ids)


class _JsonArray:
    """Items written one by one as the members of a JSON array already opened in ``stream``."""

    def __init__(self, stream: IO[str]):
        self.stream, self.count = stream, 0

    def add(self, item: dict) -> None:
        self.stream.write(("," if self.count else "") + json.dumps(item, separators=(",", ":")))
        self.count += 1


def check_out(out: str) -> Path:
    """``--out`` as a local folder that is absent, empty, or an earlier export (replaced whole at the end);
    ConfigError saying why not."""
    folder = location(out)
    if is_remote(folder):
        raise ConfigError(f"--out {out}: a local folder, not an object store (COCO readers open the image files "
                          "from a folder)")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {out} is a file; export writes a folder")
    if names(folder) and not _earlier_export(folder):
        raise ConfigError(f"--out {out} exists, is not empty and is not an earlier export; export writes a new "
                          "folder (remove it or choose another)")
    return folder


def _earlier_export(folder: Path) -> bool:
    """True when ``folder`` holds exactly what an export writes, its JSON opening as an export's does."""
    if names(folder) != {ANNOTATIONS, IMAGES}:
        return False
    try:
        with open(folder / ANNOTATIONS, "rb") as stream:
            return stream.read(len(OPENING)) == OPENING
    except OSError:
        return False


def export_coco(ds: DatasetFolder, out: str, scheme: str = "auto",
                advance: Callable[[], None] = lambda: None) -> CocoExport:
    """Write ``ds``'s samples to ``out`` (see the module's docstring); ``advance`` is called once per sample.

    ``scheme``: ``auto``, ``coco`` or ``dataset`` category ids (``categories.category_ids``). A sample
    that is not the format stops the export with a DataError naming the shard and key; ``out`` stays as
    it was."""
    folder = check_out(out)
    spellings = {c.get("id"): c for c in ds.manifest["vocabulary"]["classes"] if isinstance(c, dict)}
    classes = [dict(spellings.get(c["id"], {}), **c) for c in ds.classes]  # classes.json's, + detector names
    ids, used = category_ids(classes, scheme)
    categories = [{"id": ids[c["id"]], "name": c["name"], "class_id": c["id"], "seen": c["seen"]}
                  for c in sorted(classes, key=lambda c: ids[c["id"]])]
    made = "the oracle's top instance of each prompted class" if ds.phase is Phase.ORACLE \
        else "8-connected components of each class's pixels"
    source = {"fingerprint": ds.manifest.get("fingerprint"), "vocabulary": ds.manifest["vocabulary"].get("name"),
              "phase": ds.phase.value, "category_ids": used, "instances": made}
    info = {"description": DESCRIPTION, "version": version("datagen"), "datagen": source}
    head = {"info": info, "licenses": [], "categories": categories}
    written = CocoExport(folder, 0, 0, used)

    def fill(tmp: Path) -> None:
        (tmp / IMAGES).mkdir()
        side = tmp / f"{ANNOTATIONS}.annotations"
        with open(tmp / ANNOTATIONS, "w") as main, open(side, "w") as rest:
            main.write(json.dumps(head, separators=(",", ":"))[:-1] + ',"images":[')
            images, annotations = _JsonArray(main), _JsonArray(rest)
            for shard in ds.shards:
                for sample in ds.samples(shard):
                    try:
                        _export_sample(sample, ds, ids, tmp / IMAGES, images, annotations)
                    except DataError as err:
                        raise BadSample(shard, sample["__key__"], str(err)) from err
                    advance()
            rest.close()
            main.write('],"annotations":[')
            with open(side) as stream:
                shutil.copyfileobj(stream, main)
            main.write("]}")
        side.unlink()
        written.images, written.annotations = images.count, annotations.count

    replace_folder(folder, fill, ANNOTATIONS)
    return written


def _export_sample(sample: dict, ds: DatasetFolder, ids: dict[int, int], images_dir: Path,
                   images: _JsonArray, annotations: _JsonArray) -> None:
    """One sample: its image file, its COCO image entry and one annotation per object of each class."""
    key = sample["__key__"]
    if not key.isdigit():  # the key names the image file: never a path
        raise DataError(f"key {key!r} is not a sample index")
    meta = decode_json(sample["json"])
    class_ids = sample_classes(meta, ds.names)
    ext = next(ext for ext in IMAGE_MEMBERS if ext in sample)
    with open_image(sample[ext], "the image") as image:  # the header: its size, no pixel decoded
        width, height = image.size
    if ds.phase is Phase.ORACLE:
        found = list(oracle_objects(meta.get("instances"), class_ids, height, width))
    else:
        seg = decode_mask(sample["seg.png"])
        check_mask(seg, (height, width), class_ids, f"the sample's classes {sorted(class_ids)}")
        found = objects(seg, class_ids)
    try:
        with open(images_dir / f"{key}.{ext}", "xb") as file:  # "x": a key seen before is refused
            file.write(sample[ext])
    except FileExistsError:
        raise DataError("the key appears twice (in this shard or an earlier one)") from None
    image_id = int(key)
    images.add({"id": image_id, "file_name": f"{key}.{ext}", "width": width, "height": height})
    for class_id, fields in found:
        annotations.add({"id": annotations.count + 1, "image_id": image_id, "category_id": ids[class_id], **fields})
