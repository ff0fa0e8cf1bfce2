#!/usr/bin/env bash
# The GPU throughput measurement as one command, for a lent GPU machine that reaches no package registry.
#
#   bash benchmarks/gpu_run.sh prepare     # here (registries reachable): download the wheels datagen needs
#                                          # and such a machine's image lacks, for CPython 3.12, into .whl/
#   bash benchmarks/gpu_run.sh run [OUT]   # there, with .whl/ carried: install them into /tmp/site, run
#                                          # benchmarks/throughput.py --full (eager, then --compile); the
#                                          # reports (JSON) and logs go to OUT (default $OUT, else runs/gpu)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh smoke   # here, on a CPU: both runs at the smallest size
#
# The GPU image holds torch, torchvision, transformers, accelerate, huggingface_hub, safetensors, numpy,
# Pillow, PyYAML, typer and rich; WHEELS below are datagen's other imports and theirs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}  # smoke: PYTHON=.venv/bin/python

WHEELS=(diffusers==0.42.1 importlib_metadata==10.2.0 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
        webdataset==1.0.2 braceexpand==0.1.7 pycocotools==2.0.11 pydantic==2.14.4 pydantic_core==2.50.5
        annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0
        universal_pathlib==0.3.10 pathlib_abc==0.5.2 fsspec==2026.9.0)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)

benchmark() {  # benchmark NAME ARGS...: one throughput run, its JSON report and log in $out
    local name=$1; shift
    echo "== throughput $name: $*"
    "$PY" benchmarks/throughput.py "$@" 2>&1 | tee "$out/$name.log"
    tail -n 1 "$out/$name.log" > "$out/$name.json"
}

case "${1:-}" in
  prepare)
    mkdir -p .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]/#/--platform=}" -d .whl "${WHEELS[@]}"
    ls .whl
    ;;
  run)
    out=${2:-${OUT:-runs/gpu}}
    mkdir -p "$out"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DATAGEN_CACHE=/tmp/datagen-cache
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    "$PY" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers',
diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
    benchmark eager --full --loading
    benchmark compile --full --compile
    ;;
  smoke)
    out=${2:-$(mktemp -d)}
    mkdir -p "$out"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    benchmark eager --arch tiny --image-size 64 --steps 2 --batch-size 2 --rounds 1 --loading
    benchmark compile --arch tiny --image-size 64 --steps 2 --batch-size 2 --rounds 1 --compile
    echo "reports in $out"
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
