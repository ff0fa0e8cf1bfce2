"""What made a dataset, pinned: model revisions or content hashes, and the code version."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding pipeline/ (for its git commit)


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in name order)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def model_record(source: str) -> dict:
    """A model's source pinned: a local path with its content hash, torchvision's COCO weights with
    the hash torchvision checks, or a hub id with the commit its cached snapshot was resolved to."""
    path = Path(source).expanduser()
    if path.exists():
        return {"source": str(path.resolve()), "sha256": content_sha256(path)}
    if source == "COCO_V1":
        from stages.oracle import COCO_WEIGHTS

        return {"source": f"torchvision {COCO_WEIGHTS}", "url": COCO_WEIGHTS.url,
                "revision": Path(COCO_WEIGHTS.url).stem.rsplit("-", 1)[-1],
                "torchvision": _version("torchvision")}
    return {"source": source, "revision": _hub_revision(source)}


def oracle_record(backend: str, config: str | None, weights: str) -> dict:
    """The oracle pinned: its backend, its weights (``model_record``) and, for detectron2, its config:
    the model-zoo name or path, the file it resolved to and that file's hash, and detectron2's version."""
    record = {"backend": backend, **model_record(weights)}
    if config is not None:
        from stages.oracle import import_detectron2_backend

        path = import_detectron2_backend().config_file(config)
        record["config"] = {"source": config, "file": str(path.resolve()), "sha256": file_sha256(path),
                            "detectron2": _version("detectron2")}
    return record


def _hub_revision(repo_id: str) -> str:
    """The commit of the cached snapshot a hub id loads from (offline: the cache only)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json")
    return Path(found).parent.name if isinstance(found, str) else "unknown (not in the local hub cache)"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def code_version() -> dict:
    """datagen's package version, plus the git commit (and whether the tree was dirty) where known."""
    record = {"datagen": _version("datagen")}
    if (PACKAGE_ROOT / ".git").exists():
        try:
            git = ["git", "-C", str(PACKAGE_ROOT)]
            record["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                                  timeout=10, check=True).stdout.strip()
            record["git_dirty"] = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                                      capture_output=True, text=True, timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return record
