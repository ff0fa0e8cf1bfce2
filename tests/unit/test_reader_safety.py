"""Reading a shard never unpickles a member (no dataset run needed: a hand-made tar)."""

import io
import pickle
import tarfile

from PIL import Image

from pipeline.dataset.reader import open_dataset, safe_decoder


class _Trap:
    """Unpickling this writes a file: proof that a reader ran code from the data."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_readers_never_unpickle_members(tmp_path):
    trap = tmp_path / "unpickled"
    shard = tmp_path / "shard-000000.tar"
    payload = pickle.dumps(_Trap(str(trap)))
    with tarfile.open(shard, "w") as tar:
        for name, data in (("000000000000.jpg", _jpeg()), ("000000000000.pyd", payload),
                           ("000000000000.pickle", payload)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sample = next(iter(open_dataset(str(shard))))
    assert sample["pyd"] == payload and sample["pickle"] == payload
    decoded = safe_decoder()({"__key__": "k", "pyd": payload, "pth": payload})  # what wids_dataset uses
    assert decoded["pyd"] == payload and decoded["pth"] == payload
    assert not trap.exists()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    return buf.getvalue()
