#!/usr/bin/env bash
# The GPU throughput measurement as one command, for a lent GPU machine that reaches no package registry.
#
#   bash benchmarks/gpu_run.sh prepare     # here (registries reachable): download the wheels datagen needs
#                                          # and such a machine's image lacks, for CPython 3.12, into .whl/
#   bash benchmarks/gpu_run.sh run [OUT]   # there, with .whl/ carried: install them into /tmp/site, run
#                                          # benchmarks/throughput.py --full: eager with every scheduler and the
#                                          # profile, one round, then --compile with DPM-Solver++ 25, modes a and e;
#                                          # the reports (JSON) and logs go to OUT (default $OUT, else runs/gpu);
#                                          # the whole script stops by BUDGET_S (default 470 s: under 8 minutes)
#   PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh smoke [OUT]   # here, on a CPU: the same runs at the
#                                          # smallest size (COMPILE=0 leaves out the compiled one: ~100 s on a CPU)
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

START=$(date +%s)
BUDGET_S=${BUDGET_S:-470}

benchmark() {  # benchmark NAME ARGS...: one throughput run within what is left of BUDGET_S; report and log in $out
    local name=$1; shift
    local left=$((BUDGET_S - ($(date +%s) - START)))
    echo "== throughput $name ($left s left): $*"
    timeout "$left" "$PY" benchmarks/throughput.py "$@" > "$out/$name.out" 2> "$out/$name.log" || {
        echo "!! throughput $name stopped (exit $?): $(tail -n 1 "$out/$name.log")"; return 0; }
    sed '$d' "$out/$name.out"             # the table, the scheduler column and the profile
    tail -n 1 "$out/$name.out" > "$out/$name.json"
}

measure() {  # measure SIZE_ARGS...: eager with every scheduler and the profile, then compiled (unless COMPILE=0)
    benchmark eager "$@" --rounds 1 --profile --loading
    if [ "${COMPILE:-1}" = 1 ]; then  # each mode compiles its own graphs (60-110 s each on an H200): a and e only
        benchmark compile "$@" --rounds 1 --compile --modes a e --schedulers "${COMPILED_SCHEDULERS[@]}"
    fi
    echo "reports in $out: $(cd "$out" && ls ./*.json | tr '\n' ' ')"
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
    COMPILED_SCHEDULERS=(dpmsolver++:25)  # sd15's default
    measure --full
    ;;
  smoke)
    out=${2:-$(mktemp -d)}
    mkdir -p "$out"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    COMPILED_SCHEDULERS=(dpmsolver++)
    measure --arch tiny --image-size 64 --steps 2 --batch-size 1 --schedulers ddim dpmsolver++
    ;;
  *)
    sed -n '2,15p' "$0"
    exit 2
    ;;
esac
