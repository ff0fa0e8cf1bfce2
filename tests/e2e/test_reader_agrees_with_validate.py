"""The training reader and `datagen validate` share one check of a shard's member names (issue 26):
a shard `validate` rejects is one the training reader refuses, never one it reads in full."""

import io
import tarfile

import pytest

from pipeline.dataset.reader import training_dataset
from stages.errors import DataError

KEY = "000000000005"  # the second sample of shard 1 (4 samples a shard)


def _add_members(shard, names):
    """Append members (name, bytes) to a shard, its samples kept whole (the tar is rewritten)."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for info, data in members + [(tarfile.TarInfo(n), d) for n, d in names]:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../../x", f"{KEY}.../../../x"])
def test_a_stray_member_named_as_a_path_is_refused_by_reader_and_validate(datagen, copy, name):
    _add_members(copy / "data" / "shard-000001.tar", [(name, b"stray")])
    with pytest.raises(DataError) as raised:
        list(training_dataset(copy))
    line = str(raised.value)
    assert "shard-000001.tar" in line and "are paths (../ or absolute)" in line, line
    result = datagen("validate", str(copy))
    assert result.returncode == 1 and "data/shard-000001.tar" in result.stdout, result.stdout
    assert "are paths (../ or absolute)" in result.stdout, result.stdout


def test_a_damaged_jpeg_is_refused_by_reader_and_validate(datagen, copy):
    """400 zeroed bytes inside a JPEG: Pillow decodes it into garbage without an error; both refuse it."""
    shard = copy / "data" / "shard-000001.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            if info.name == f"{KEY}.jpg":
                data = data[:len(data) // 2] + bytes(400) + data[len(data) // 2 + 400:]
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="does not decode as an image"):
        list(training_dataset(copy))
    result = datagen("validate", str(copy))
    assert result.returncode == 1 and f"key {KEY}: image does not decode as an image" in result.stdout, result.stdout
