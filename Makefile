# Two commands do everything on a fresh machine:
#   make demo   the main job
#   make test   the test suite
# Both create .venv from the pinned constraints on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench env clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: 2.13.0 is the CPU build on these machines (no multi-GB CUDA download).
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,apps,triton,jit]"
	# Oracles for the fused-optimizer tests and benchmarks. torchrec goes in with
	# --no-deps, or pip swaps fbgemm's CPU build for the CUDA one, which cannot load here.
	$(BIN)/pip install -q -c constraints.txt fbgemm-gpu-cpu==1.8.0 pyre-extensions tensordict torchmetrics
	$(BIN)/pip install -q -c constraints.txt --no-deps torchrec==1.8.0
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/embtab demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core_cpu.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
