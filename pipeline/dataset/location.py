"""Where a dataset lives: a local folder (``pathlib.Path``) or a prefix in an object store (``upath.UPath``).

A local path or ``file://`` URL gives a ``Path``; an fsspec URL (``s3://bucket/prefix``, ``gs://``,
``az://``...) gives a ``UPath`` on that store's fsspec file system, whose credentials come from the
store's own environment (``AWS_*`` for S3...): datagen stores none. Both answer the pathlib calls datagen
makes (``/``, ``name``, ``exists``, ``glob``, ``read_bytes``, ``open``); what an object store does
differently (no rename, no folders) is handled in ``atomic``, and ``names`` lists a folder in one call.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import fsspec
from upath import UPath
from webdataset.gopen import gopen_schemes

from stages.errors import DatagenError

Location = Path | UPath
STORE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")  # object stores; webdataset opens them via fsspec
try:  # what a store's client raises besides OSError (s3fs turns the store's refusals into OSError)
    from botocore.exceptions import BotoCoreError

    STORE_ERRORS: tuple[type[Exception], ...] = (OSError, BotoCoreError)
except ImportError:
    STORE_ERRORS = (OSError,)


class LocationError(DatagenError, ValueError):
    """A URL datagen cannot use: not an object store's, no bucket, or its fsspec backend is not installed."""


def location(value: str | os.PathLike) -> Location:
    """``value`` as a local ``Path`` or, for an fsspec URL, a ``UPath`` that always lists afresh
    (writers on other machines add objects while a run lists)."""
    if isinstance(value, UPath) and is_remote(value):
        return value
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if "://" not in text:
        return Path(text).expanduser()
    protocol = text.split("://", 1)[0]
    if protocol == "file":
        return Path(url2pathname(urlparse(text).path))
    if protocol not in STORE_PROTOCOLS:
        raise LocationError(f"{text}: {protocol}:// is not an object store (datagen takes s3://, gs:// or az:// URLs, "
                            "local paths and file:// URLs)")
    if not urlparse(text).netloc:
        raise LocationError(f"{text}: no bucket ({protocol}://BUCKET/PREFIX)")
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        raise LocationError(f"{text}: {protocol}:// needs a package that is not installed ({err})") from None
    return UPath(text.rstrip("/"), use_listings_cache=False)


def is_remote(path) -> bool:
    """True for an object-store location (a ``UPath`` that is not a local path); str and Path are local."""
    return isinstance(path, UPath) and not isinstance(path, Path)


def open_store_url(url: str, mode: str = "rb", *_, **__) -> object:
    """webdataset's opener (``gopen``) for object-store URLs: a file object from fsspec, so shards are
    read with the store's own credentials, as a run writes them (webdataset itself knows only
    ``pipe:``, http and a ``gsutil`` pipe)."""
    return fsspec.open(url, mode).open()


for _protocol in STORE_PROTOCOLS:
    gopen_schemes[_protocol] = open_store_url


def shard_location(url: str) -> Location | None:
    """Where a shard URL lives when datagen can look beside it (its stats, classes, manifest): a local
    path or an object-store URL; None for what it can only stream (``pipe:``, http)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return location(url) if not url.startswith("pipe:") and protocol in (*STORE_PROTOCOLS, "file") else None


def check_reachable(folder: Location) -> None:
    """LocationError naming ``folder`` when its store cannot be listed (no credentials, a refusal, no
    endpoint), before a command reads or writes there; a prefix with nothing in it yet is fine."""
    if not is_remote(folder):
        return
    try:
        folder.fs.ls(folder.path, detail=False)
    except FileNotFoundError:
        pass
    except STORE_ERRORS as err:
        raise LocationError(f"{folder}: cannot reach the store ({store_error(err)})") from None


def store_error(err: Exception) -> str:
    """An exception from a store's client as a short reason."""
    reason = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


@dataclass(frozen=True)
class Entry:
    size: int  # bytes (0 for a folder)
    modified: float  # seconds since the epoch: the file system's clock, or the store's


def listing(folder: Location) -> dict[str, Entry]:
    """The entries of ``folder`` by name with their sizes and modification times (empty when it does
    not exist), in one listing. A store's zero-byte object named like the prefix itself (what a
    console's "create folder" makes) is not an entry."""
    if not is_remote(folder):
        try:
            with os.scandir(folder) as entries:
                return {e.name: Entry(s.st_size, s.st_mtime) for e in entries for s in [e.stat()]}
        except (FileNotFoundError, NotADirectoryError):
            return {}
    try:
        infos = folder.fs.ls(folder.path, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for info in infos:
        name = info["name"].rstrip("/")
        if name != folder.path.rstrip("/"):
            modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
            found[name.rsplit("/", 1)[-1]] = Entry(int(info.get("size") or 0), _seconds(modified))
    return found


def _seconds(modified) -> float:
    if modified is None:
        return 0.0
    if isinstance(modified, (int, float)):
        return float(modified)
    if isinstance(modified, str):
        modified = datetime.fromisoformat(modified.replace("Z", "+00:00"))
    return modified.timestamp()


def names(folder: Location) -> set[str]:
    """The names of the entries of ``folder`` (empty when it does not exist), in one listing."""
    if not is_remote(folder):
        try:
            return set(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return set()
    return set(listing(folder))


@contextmanager
def local_copy(folder: Location) -> Iterator[Path]:
    """``folder`` as a local folder for a loader that reads files (safetensors, torch.load): itself when
    local, else a temporary download of its objects, removed afterwards."""
    if not is_remote(folder):
        yield folder
        return
    here = Path(tempfile.mkdtemp(prefix="datagen-download-"))
    try:
        for name in names(folder):
            folder.fs.get_file((folder / name).path, str(here / name))
        yield here
    finally:
        shutil.rmtree(here, ignore_errors=True)


def remove_tree(folder: Location) -> None:
    """Delete ``folder`` and everything in it, if it exists."""
    if not is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
    elif names(folder):
        folder.fs.rm(folder.path, recursive=True)
