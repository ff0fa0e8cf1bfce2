"""CI's detectron2: a shared wheel that is present must install, and once installed its tests must run.

`.ci/install-detectron2` runs here in a copy of the checkout whose ``.venv`` is this test's Python, with
a pip that skips the editable install of datagen (not what is tested, and it would change this
environment) and hands every other call to the real pip.
"""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2_fixtures import REQUIRED_ENV, detectron2_mark

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def checkout(tmp_path) -> Path:
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "install-detectron2", checkout / ".ci")
    bin_dir = checkout / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    pip = bin_dir / "pip"
    pip.write_text(f'#!/bin/sh\ncase " $* " in *" -e "*) exit 0;; esac\nexec "{sys.executable}" -m pip "$@"\n')
    pip.chmod(pip.stat().st_mode | stat.S_IXUSR)
    return checkout


def install(checkout: Path, wheels: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(checkout / ".ci" / "install-detectron2")], env={"PATH": "/usr/bin:/bin",
                          "DATAGEN_WHEELS": str(wheels)}, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name, content", [
    ("detectron2-0.6-cp311-cp311-linux_x86_64.whl", b"not a zip"),  # damaged
    ("detectron2-0.6-cp27-cp27m-win32.whl", b""),  # another Python and platform
])
def test_a_wheel_that_is_present_but_cannot_be_installed_fails_ci(checkout, tmp_path, name, content):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / name).write_bytes(content)
    result = install(checkout, wheels)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"detectron2: {wheels / name} cannot be installed with this Python on this platform" in result.stderr


def test_no_wheel_installs_nothing_and_the_tests_skip(checkout, tmp_path):
    result = install(checkout, tmp_path)
    assert result.returncode == 0 and result.stdout == f"detectron2: no wheel in {tmp_path}; its tests will skip\n"


def test_detectron2_tests_skip_where_it_is_missing_unless_ci_installed_it():
    skips = lambda mark: mark.args[0]  # noqa: E731 - the skipif condition
    assert skips(detectron2_mark(False, {}))
    assert not skips(detectron2_mark(False, {REQUIRED_ENV: "1"}))
    assert not skips(detectron2_mark(True, {}))


def test_a_detectron2_test_fails_instead_of_skipping_where_ci_requires_it(tmp_path):
    """A pytest run where detectron2 cannot be found, as CI runs it after installing the wheel."""
    hidden = "import sys; sys.modules['detectron2'] = None; import pytest; sys.exit(pytest.main(sys.argv[1:]))"
    test = "tests/unit/test_detectron2_oracle.py::test_configs_the_oracle_cannot_use_are_one_line"
    result = subprocess.run([sys.executable, "-c", hidden, "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                            env={**os.environ, REQUIRED_ENV: "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "skipped" not in result.stdout, result.stdout  # an error, in its fixture
    assert "the detectron2 oracle backend needs detectron2, which cannot be imported here" in result.stdout

