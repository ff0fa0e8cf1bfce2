PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench bench-memory bench-throughput bench-labelers bench-grounding bench-world bench-schedulers bench-oracle clean

# The venv is (re)installed when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/datagen run --vocab voc --n 32 --models tiny --out runs/demo

# Everything, unit and end-to-end, as CI runs it.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

# tests/unit only (no CLI runs, Ray or subprocesses): for the edit loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m unit

# Tiny-preset throughput of the in-process and Ray executors (also in steady state), and the time outside
# model compute.
bench: $(STAMP)
	$(BIN)/python benchmarks/executors.py

# Seconds per image of plain generation and of phase C with each labeler (grounding, attention), 1 thread.
bench-labelers: $(STAMP)
	$(BIN)/python benchmarks/labelers.py

# Peak memory of phase C at n = 200 and 2000 (in-process executor): flat in n.
bench-memory: $(STAMP)
	$(BIN)/python benchmarks/memory.py

# SD 1.5's architecture (random weights): datagen's phases against bare diffusers, FLOPs, model loading.
# Reduced size for a CPU; on a GPU: `$(BIN)/python benchmarks/throughput.py --full` (or benchmarks/gpu_run.sh).
bench-throughput: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python benchmarks/throughput.py --loading --profile

# Proof that the grounding module learns: toy shapes in VOC layout, held-out mIoU and CPU time.
bench-grounding: $(STAMP)
	$(BIN)/python benchmarks/grounding_toy.py --out runs/bench-grounding

# Proof on a miniature world: build (or reuse) the world's models, run datagen on it, print the table.
bench-world: $(STAMP)
	$(BIN)/python benchmarks/world.py --out runs/bench-world

# Labels per scheduler on the miniature world (DDIM 50, DPM-Solver++ 20 and 25, UniPC 20; DDIM 50 at a second seed
# for the noise), every phase with each; the sizes that fit about 25 minutes of a shared CPU (docs/configs.md).
bench-schedulers: $(STAMP)
	$(BIN)/datagen world build --models world
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python benchmarks/schedulers.py --out runs/bench-schedulers \
	  --bootstrap-n 128 --train-steps 200 --n 8 --eval-n 64 --real-val 100

# CPU seconds per image of the oracle's backends, torchvision and detectron2, at the same input sizes
# (needs detectron2: docs/oracle.md).
bench-oracle: $(STAMP)
	$(BIN)/python benchmarks/oracle_backends.py

clean:
	rm -rf $(VENV) runs
