"""Atomic writes: every file and folder datagen writes appears whole or not at all.

A file is written under a temporary name beside it and renamed into place; a folder is filled under
a temporary name and swapped in by a rename pair, the previous version kept as ``NAME.old<uuid>``
until the new one is in place (``recover_folder`` undoes a kill between the two renames). Temporary
names end in ``.tmp<uuid4>``: writers on many machines share one output folder, where process ids
collide.

On an object store (``location.is_remote``) there is no rename, but a single PUT is atomic: a file is
written locally and uploaded whole, and a folder's files are uploaded with the one that marks it
complete last (``replace_folder``'s ``last``). The only temporaries there are the multipart uploads of
large files that a kill cut short, invisible as objects; ``remove_stale_temporaries`` aborts them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.dataset.location import STORE_ERRORS, is_remote, names, store_error
from stages.errors import WriteError

STALE_TEMPORARY_SECONDS = 3600  # a temporary untouched this long has no live writer
CLAIM_ATTEMPTS = 3  # a store's conditional PUT that met a concurrent one is retried


def temporary_path(path: Path, kind: str = "tmp") -> Path:
    """A name beside ``path`` to write its content under before renaming, unique across machines."""
    path = path if is_remote(path) else Path(path)
    return path.with_name(f"{path.name}.{kind}{uuid.uuid4().hex}")


def cannot_write(path: Path, err: Exception) -> WriteError:
    """The one line for an ``OSError`` while writing ``path`` (full disk, read-only file system, permissions),
    or a store client's error."""
    if isinstance(err, OSError) and err.strerror:
        return WriteError(f"cannot write {path}: {err.strerror}")
    return WriteError(f"cannot write {path}: {store_error(err) if is_remote(path) else err}")


@contextmanager
def _local_temporary_folder() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="datagen-upload-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def make_folder(path: Path) -> Path:
    """``path`` and its parents created if missing; WriteError naming it when they cannot be. An object
    store has no folders: nothing to create there."""
    if is_remote(path):
        return path
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise WriteError(f"cannot create folder {path}: a file of that name (or above it) is in the way") from err
    except OSError as err:
        raise WriteError(f"cannot create folder {path}: {err.strerror or err}") from err
    return Path(path)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is flushed to disk and renamed to ``path``.
    On any failure the temporary is removed and ``path`` keeps its previous content; an ``OSError``
    (a full disk...) becomes a WriteError naming ``path``. On an object store the temporary is local and
    is uploaded whole."""
    if is_remote(path):
        with _local_temporary_folder() as folder, _raising_write_error(path):
            yield folder / path.name
            path.fs.put_file(str(folder / path.name), path.path)
        return
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        raise cannot_write(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _raising_write_error(path) -> Iterator[None]:
    try:
        yield
    except WriteError:
        raise
    except STORE_ERRORS as err:
        raise cannot_write(path, err) from err


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` whole with ``data`` unless it exists (checked atomically: two writers on a
    shared folder cannot both create it); False when it already existed. On an object store this is a
    conditional PUT (create if absent) where its fsspec backend offers one (S3's ``If-None-Match``); a
    backend without one checks, then writes. S3 answers a conditional PUT racing another with 409
    ``ConditionalRequestConflict``, to be retried: the retry finds the winner's object."""
    if is_remote(path):
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                path.fs.pipe_file(path.path, data, mode="create")
                return True
            except FileExistsError:
                return False
            except OSError as err:
                if not _concurrent_write(err) or attempt == CLAIM_ATTEMPTS - 1:
                    raise cannot_write(path, err) from err
                time.sleep(0.5 * (attempt + 1))
            except STORE_ERRORS as err:
                raise cannot_write(path, err) from err
    path = Path(path)
    tmp = temporary_path(path)
    try:
        tmp.write_bytes(data)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        raise cannot_write(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)


def _concurrent_write(err: OSError) -> bool:
    """Whether a store refused a write because another ran at once: s3fs gives S3's 409
    ``ConditionalRequestConflict`` as an ``OSError`` (``EIO``: its code is not in s3fs's table) caused by
    the client's error, and a busy store (503 SlowDown) as ``EBUSY``."""
    error = getattr(err.__cause__, "response", {}).get("Error", {})
    return err.errno == errno.EBUSY or error.get("Code") == "ConditionalRequestConflict"


def replace_folder(folder: Path, fill: Callable[[Path], None], last: str) -> None:
    """Let ``fill`` write a new version of ``folder`` into an empty temporary folder, then swap it in.
    Some version of ``folder`` exists at every moment but between the two renames, which
    ``recover_folder`` repairs. On any failure the temporary folder is removed and the previous
    version stays; an ``OSError`` (a full disk...) becomes a WriteError naming ``folder``.

    On an object store, which cannot swap a folder, the previous version's ``last`` file is deleted
    first and the new one's uploaded after every other file: readers take a folder without ``last`` for
    absent, so they see a whole version or none (a kill in between leaves none)."""
    if is_remote(folder):
        _upload_folder(folder, fill, last)
        return
    folder = Path(folder)
    tmp, old = temporary_path(folder), temporary_path(folder, "old")
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    except WriteError:
        raise
    except OSError as err:
        raise cannot_write(folder, err) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _upload_folder(folder, fill: Callable[[Path], None], last: str) -> None:
    with _local_temporary_folder() as local, _raising_write_error(folder):
        fill(local)
        new = sorted(p.name for p in local.iterdir() if p.is_file())
        if last not in new:
            raise ValueError(f"{folder}: the new version has no {last} to mark it complete")
        old = names(folder)
        if last in old:
            folder.fs.rm_file((folder / last).path)
        for name in sorted(old - set(new) - {last}):
            folder.fs.rm_file((folder / name).path)
        for name in [*(n for n in new if n != last), last]:
            folder.fs.put_file(str(local / name), (folder / name).path)


def recover_folder(folder: Path) -> None:
    """After a kill inside ``replace_folder``: put the previous version back if none is in place, and
    drop the temporaries. Call it only while no other writer of ``folder`` runs (under the output lock).
    An object store needs none: nothing there is renamed."""
    if is_remote(folder):
        return
    folder = Path(folder)
    for old in sorted(folder.parent.glob(f"{folder.name}.old*")):
        if not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(old, ignore_errors=True)
    for tmp in folder.parent.glob(f"{folder.name}.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def build_folder_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """``folder``, built by ``build`` into a temporary folder and renamed into place unless it already
    exists; a half-built folder is never visible. When two processes build at once, the first rename
    wins and the other discards its copy."""
    folder = Path(folder)
    if folder.exists():
        return folder
    tmp = temporary_path(folder)
    try:
        tmp.mkdir(parents=True)
        build(tmp)
        tmp.rename(folder)
    except OSError:
        if not folder.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _abort_stale_uploads(folder, cutoff: float) -> None:
    if not hasattr(folder.fs, "list_multipart_uploads"):  # not S3
        return
    bucket, _, prefix = folder.path.partition("/")
    try:  # the uploads under this folder only (a listing holds at most 1000; the next run takes the rest)
        listed = folder.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=f"{prefix}/")
        for upload in listed.get("Uploads", []):
            if upload["Initiated"].timestamp() < cutoff:
                folder.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"],
                                  UploadId=upload["UploadId"])
    except STORE_ERRORS as err:
        raise cannot_write(folder, err) from err


def remove_stale_temporaries(folder: Path, max_age: float = STALE_TEMPORARY_SECONDS) -> None:
    """Delete temporaries left by a killed run (never a finished file): those not modified for
    ``max_age`` seconds. A younger one may belong to a run of the same config writing to this folder
    now (from another machine, too: the per-machine lock cannot tell), and a writer finishes a
    temporary within seconds, so age alone tells a stale temporary from a live one. On S3, the
    multipart uploads under ``folder`` that were started that long ago are aborted (a kill mid-upload
    leaves one, holding storage); other stores write no temporaries."""
    cutoff = time.time() - max_age
    if is_remote(folder):
        _abort_stale_uploads(folder, cutoff)
        return
    for tmp in Path(folder).glob("*.tmp*"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink(missing_ok=True)
        except FileNotFoundError:  # renamed into place or removed by its writer meanwhile
            pass
