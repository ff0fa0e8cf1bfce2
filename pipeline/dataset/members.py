"""A sample's members decoded without trusting them, and checked against the format (docs/format.md).

Every reader of shards (``reader.training_dataset``, `datagen validate`, `show`, `stats`) and of real
annotated images (``voc``) decodes through here, so hostile bytes read the same everywhere: an image
larger than ``MAX_PIXELS`` is refused from its header before any pixel is decoded (a decompression
bomb), a mask must be one 8-bit class id per pixel of the image's size, a ``json`` member an object
whatever its nesting. Each problem is a ``DataError`` saying what is wrong with the member; callers
add the shard and key, or the file.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from stages.errors import DataError
from stages.metrics import IGNORE_INDEX

MAX_PIXELS = 1 << 26  # 67M pixels (8192x8192): more than any image or mask datagen writes or reads as ground truth
MASK_MODES = ("L", "P")  # one 8-bit value per pixel: grey levels (datagen's seg.png) or a palette (VOC's masks)
UNSAFE = {"pyd", "pickle", "pkl", "pth", "pt"}  # members that load by running code: never part of a sample
IMAGE_MEMBERS = ("jpg", "png")  # a sample's image is one of these (the run's image_format)


class RepeatedMember(DataError):
    """A member name that appears twice within one sample (a damaged or hostile tar)."""

    def __init__(self, key: str, name: str):
        super().__init__(f"member {name} appears twice")
        self.key = key


def group_members(files: Iterable[tuple[str, bytes]]) -> Iterator[dict]:
    """Tar members ``(name, bytes)`` grouped into samples (``__key__`` plus one entry per member): the
    key is the name up to its first dot, the member the rest. Every name lands in a sample, so a stray
    member (``../x``, ``KEY.../../x``) is seen by ``check_members``; webdataset's own grouping drops the
    names it cannot split. Both the training reader and `datagen validate` group through here."""
    sample = None
    for name, data in files:
        key, _, member = name.partition(".")
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key}
        if member in sample:
            raise RepeatedMember(key, name)
        sample[member] = data
    if sample is not None:
        yield sample


def check_members(key: str, members: set[str], expected: set[str] | None = None) -> None:
    """DataError unless the key is a sample index and the members are the format's: none named as a path
    or loading by unpickling, and exactly ``expected`` (None: a dataset sample's image, json and seg.png)."""
    named = sorted(f"{key}.{m}" for m in members)
    if any("/" in name or "\\" in name for name in named) or key.startswith("."):
        raise DataError(f"member names {named} are paths (../ or absolute), not sample members")
    if not key.isdigit():
        raise DataError(f"member names {named} are not <sample index>.<member>")
    if unsafe := sorted(m for m in members if m.rsplit(".", 1)[-1] in UNSAFE):
        raise DataError(f"member {', '.join(unsafe)} would run code when loaded (pickle): not a datagen sample")
    if expected is not None:
        if members != expected:
            raise DataError(f"members {sorted(members)}, expected {sorted(expected)}")
        return
    images = members & set(IMAGE_MEMBERS)
    if len(images) != 1 or members - images != {"json", "seg.png"}:
        oracle = " (a phase A oracle shard? read the dataset's data/ shards)" if "latent.npy" in members else ""
        raise DataError(f"members {sorted(members)}, expected an image (jpg or png), json and seg.png{oracle}")


def open_image(source: bytes | Path, member: str) -> Image.Image:
    """The image's header read (no pixel decoded yet) and its size within ``MAX_PIXELS``."""
    try:
        with warnings.catch_warnings():  # Pillow warns from 89M pixels on; here that is already refused
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"{member} is a decompression bomb ({str(err).split(',')[0]})") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{member} does not decode as an image ({_plain(err)})") from err
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise DataError(f"{member} is {image.width}x{image.height} pixels, more than the {MAX_PIXELS} a reader "
                        "decodes (a decompression bomb?)")
    return image


def _pixels(image: Image.Image, member: str, mode: str | None = None) -> np.ndarray:
    try:
        with image:
            return np.array(image.convert(mode) if mode else image)
    except (OSError, ValueError, SyntaxError) as err:  # truncated or damaged pixel data
        raise DataError(f"{member} does not decode as an image ({_plain(err)})") from err


def decode_image(source: bytes | Path, member: str) -> np.ndarray:
    """An image member's pixels as stored (any mode; `datagen validate` checks they are RGB), every byte
    checked (``_strict_jpeg``)."""
    image = open_image(source, member)
    jpeg = image.format == "JPEG"
    pixels = _pixels(image, member)
    if jpeg:
        _strict_jpeg(source, member)
    return pixels


def decode_rgb(source: bytes | Path, member: str) -> np.ndarray:
    """An image member as uint8 (H, W, 3), every byte checked as ``decode_image`` checks it, so the readers
    refuse what `datagen validate` rejects."""
    image = open_image(source, member)
    jpeg = image.format == "JPEG"
    pixels = _pixels(image, member, "RGB")
    if jpeg:
        _strict_jpeg(source, member)
    return pixels


def _strict_jpeg(source: bytes | Path, member: str) -> None:
    """Pillow decodes a JPEG whose compressed data is damaged (zeroed bytes, a lost segment) into garbage
    without an error, so a JPEG's data is decoded again by libjpeg-turbo in strict mode, which refuses it."""
    try:
        simplejpeg.decode_jpeg(source if isinstance(source, bytes) else source.read_bytes(), strict=True)
    except ValueError as err:
        raise DataError(f"{member} does not decode as an image ({err})") from err


def decode_mask(source: bytes | Path, member: str = "seg.png") -> np.ndarray:
    """A class-id mask as uint8 (H, W): refused unless one 8-bit value per pixel (not 16-bit, not RGB)."""
    image = open_image(source, member)
    if image.mode not in MASK_MODES:
        image.close()
        raise DataError(f"{member} is a mode {image.mode} image, not one 8-bit class id per pixel (mode L)")
    return _pixels(image, member)


def decode_json(data: bytes, member: str = "json") -> dict:
    """A json member as a dict (any nesting depth is an error, not a crash)."""
    try:
        meta = json.loads(data)
    except RecursionError as err:
        raise DataError(f"{member} is nested too deeply to read") from err
    except ValueError as err:
        raise DataError(f"{member} is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise DataError(f"{member} is a {type(meta).__name__}, not an object")
    return meta


def check_mask(mask: np.ndarray, image_shape: tuple[int, ...], class_ids: Collection[int],
               allowed: str = "the sample's classes", member: str = "seg.png") -> None:
    """The mask covers the image pixel for pixel and holds only 0, 255 and ``class_ids`` (``allowed``
    says what they are, for the message)."""
    if mask.shape != tuple(image_shape[:2]):
        raise DataError(f"{member} is {mask.shape[1]}x{mask.shape[0]}, the image {image_shape[1]}x{image_shape[0]}")
    ok = np.zeros(256, dtype=bool)
    ok[[0, IGNORE_INDEX, *(i for i in class_ids if 0 <= i < 256)]] = True
    if not np.take(ok, mask).all():  # a table lookup: cheaper than np.unique
        bad = np.flatnonzero(np.bincount(mask.ravel(), minlength=256) * ~ok).tolist()
        raise DataError(f"{member} holds class ids {bad}, not 0/{IGNORE_INDEX} or {allowed}")


def sample_classes(meta: dict, known: dict[int, str] | None = None) -> list[int]:
    """The class ids a sample's json names (``class_ids`` with their ``classes``), checked against the
    dataset's ``classes.json`` (``known``: id -> name) when given."""
    ids, names = meta.get("class_ids"), meta.get("classes")
    if not isinstance(ids, list) or not all(type(i) is int for i in ids) or not isinstance(names, list) \
            or len(names) != len(ids):
        raise DataError("json's class_ids and classes are not two lists of the same length (ids and names)")
    if known is not None:
        if unknown := [f"{i} '{n}'" for i, n in zip(ids, names, strict=True) if known.get(i) != n]:
            raise DataError(f"json names classes {', '.join(unknown)} that classes.json does not have")
    return ids


def _plain(err: Exception) -> str:
    """Pillow's message without the object address it quotes ("<_io.BytesIO object at 0x...>")."""
    return str(err).split(" <")[0] or type(err).__name__
