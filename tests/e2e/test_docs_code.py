"""Every Python block of README.md, docs/*.md and the dataset card runs (issue 26), so none can rot.

README's and docs' blocks run in a folder where ``runs/demo`` is a tiny-preset dataset, the card's in
that dataset's own folder (where the card is), each file's blocks in order in one namespace, as a
reader would paste them. Blocks naming ``s3://my-bucket/`` read a local S3 server (moto's) holding a
copy of the dataset at ``my-bucket/coco``, and ``runs/demo-coco`` is its COCO export (the command
docs/export.md shows). Blocks that import detectron2 run where it is installed (in CI it must be: see
``detectron2_fixtures``). A block that cannot run here is marked with ``<!-- not run: why -->`` on the
line before it; none is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from detectron2_fixtures import INSTALLED, REQUIRED_ENV
from s3_server import s3_server

from pipeline.export.coco import export_coco
from pipeline.inspect.folder import open_output

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^(<!-- not run: .*?-->\n)?```python\n(.*?)^```", re.M | re.S)


def python_blocks(text: str) -> list[str]:
    """The Python blocks of a markdown text that are not marked ``<!-- not run: ... -->`` (nor import
    detectron2 where it is not installed and not required)."""
    detectron2 = INSTALLED or os.environ.get(REQUIRED_ENV) == "1"
    return [code for mark, code in BLOCK.findall(text) if not mark and (detectron2 or "detectron2" not in code)]


def run_blocks(path: Path, text: str) -> int:
    """Run a markdown file's Python blocks in order in one namespace; how many ran."""
    namespace = {"__name__": "__docs__"}
    blocks = python_blocks(text)
    for number, code in enumerate(blocks, 1):
        exec(compile(code, f"{path.name} python block {number}", "exec"), namespace)  # noqa: S102 - our docs
    return len(blocks)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """``datasets`` caches in a temporary folder and may open the local S3 server's URLs (the tests'
    HF_HUB_OFFLINE would stop it: no hub is asked for anything)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


def test_the_markdown_blocks_are_found_and_marks_recognised():
    text = "a\n```python\nx = 1\n```\n<!-- not run: needs a GPU -->\n```python\ny = 2\n```\n```bash\nz\n```\n"
    assert python_blocks(text) == ["x = 1\n"]
    assert sum(len(python_blocks(p.read_text())) for p in DOCS) >= 4  # README's four, at least


def test_every_python_block_of_readme_and_docs_runs(tiny_dataset, tmp_path, monkeypatch, hf_cache, ray_cluster):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(tiny_dataset)
    monkeypatch.chdir(tmp_path)
    export_coco(open_output(Path("runs/demo")), "runs/demo-coco")
    with s3_server("my-bucket") as fs:
        fs.put(str(tiny_dataset), "my-bucket/coco", recursive=True)
        assert fs.exists("my-bucket/coco/data/.index.wids.json")
        ran = {path.name: run_blocks(path, path.read_text()) for path in DOCS}
    assert ran["README.md"] == 4, ran


def test_every_python_block_of_the_dataset_card_runs(copy, monkeypatch, hf_cache, ray_cluster):
    monkeypatch.chdir(copy)
    assert run_blocks(copy / "README.md", (copy / "README.md").read_text()) == 1
