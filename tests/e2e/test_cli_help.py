"""`datagen --help` is quick: it imports no model library (torch, diffusers, transformers, torchvision, ray)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["eval", "grounding", "--help"]])
def test_help_imports_no_model_libraries(args):
    """The command modules import them in their command bodies (pipeline/cli/__init__.py)."""
    shown = subprocess.run(
        [sys.executable, "-c", "import runpy, sys; sys.argv = ['datagen', *sys.argv[1:]]\n"
         "try: runpy.run_module('pipeline.cli', run_name='__main__')\n"
         "except SystemExit: print(sorted(sys.modules), file=sys.stderr)", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "Usage:" in shown.stdout, shown.stderr
    loaded = {name.split(".")[0] for name in ast.literal_eval(shown.stderr.strip().splitlines()[-1])}
    assert not loaded & {"torch", "diffusers", "transformers", "torchvision", "ray"}, loaded
