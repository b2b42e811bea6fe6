# The README's commands. Each target sets up what it needs on a fresh clone: a .venv with the
# CPU build of torch 2.13.0 and the other dependencies, then the C++ extension, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h csrc/cuda/*.cpp)

.PHONY: all venv build test test-slow bench bench-gpu demo cuda-check triton-check gpu-check clean

all: build

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.deps

# --no-build-isolation: build against the torch in the venv (isolation would fetch a CUDA torch).
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

test: build
	@if command -v nvcc >/dev/null 2>&1 && [ -d csrc/cuda ]; then $(MAKE) cuda-check; fi
	@echo 'triton-check --quick (log: $(VENV)/triton-check.log)'
	@env -u TRITON_INTERPRET TRITON_DEFAULT_FP_FUSION=1 $(PY) -m msca_kernels.triton.aot_check --quick --dtypes float32,bfloat16 > $(VENV)/triton-check.log 2>&1 && tail -n 1 $(VENV)/triton-check.log || (cat $(VENV)/triton-check.log; exit 1)
	$(PY) -m pytest -q tests

test-slow: build
	$(PY) -m pytest -q -m slow tests

bench: build
	$(PY) -m pytest benchmarks --benchmark-json=benchmarks/results/cpu.json -q \
	    --benchmark-max-time=3 --benchmark-min-rounds=7
	$(PY) -m benchmarks.report benchmarks/results/cpu.json benchmarks/results/cpu.md

# GPU suite (benchmarks/test_bench_gpu.py): needs a CUDA build of torch in the venv, e.g.
# make bench-gpu TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# Writes benchmarks/results/<gpu-name>.json and .md (name from torch.cuda.get_device_name()).
bench-gpu: build
	@gpu=$$($(PY) -c "import re, torch; assert torch.cuda.is_available(), 'bench-gpu: no CUDA GPU visible to torch'; print(re.sub(r'[^A-Za-z0-9._-]+', '-', torch.cuda.get_device_name()).strip('-'))") && \
	$(PY) -m pytest benchmarks/test_bench_gpu.py --benchmark-json=benchmarks/results/$$gpu.json -q && \
	$(PY) -m benchmarks.report benchmarks/results/$$gpu.json benchmarks/results/$$gpu.md

demo: build
	$(VENV)/bin/msca demo --out out/demo

cuda-check:
	bash csrc/cuda/check.sh

# On a machine with one H100/H200 whose python has a CUDA torch, triton and nvcc: build, GPU
# tests, large cases, profile, benchmarks; results in out/gpu-check/ (docs/gpu.md). Under 8 min.
# `make test` runs its CPU dry run (tests/msca_kernels/test_gpu_check_dry_run.py).
GPU_PY ?= $(shell command -v python || command -v python3)
gpu-check:
	PY=$(GPU_PY) bash scripts/gpu_check.sh

# Compiles every Triton kernel, every autotuning configuration, float32/float16/bfloat16, for
# sm_80 and sm_90 with triton's compiler and ptxas: no GPU needed (make test runs --quick).
triton-check: build
	env -u TRITON_INTERPRET TRITON_DEFAULT_FP_FUSION=1 $(PY) -m msca_kernels.triton.aot_check

clean:
	rm -rf build *.egg-info msca_kernels/_C*.so $(VENV)/.built
