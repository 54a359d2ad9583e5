# The README's two commands: `make demo` (the main job) and `make test`.
# Each creates or refreshes .venv by itself. torch is pinned (torch==2.13.0): on our
# machines that is a CPU wheel on local disk. Where your package index would give a
# multi-GB CUDA build instead, point pip at a CPU-only index for torch:
#   make test TORCH_PIP_ARGS="--index-url <your CPU-only torch index>"
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
TORCH_PIP_ARGS ?=

.PHONY: demo seed-demo test test-slow test-gpu test-matrix test-torchvision venv clean

$(STAMP): pyproject.toml setup.py fmq_loader/images/_jpegregion.c Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q "torch==2.13.0" -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m fmq_loader train --config configs/cpu_small.yaml --loader both

seed-demo: $(STAMP)
	$(PY) examples/seed_speed.py

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

# Needs a CUDA device and a CUDA build of torch (pass TORCH_PIP_ARGS); skipped without one.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m gpu

# The full exit matrix (240 cases, about 12 minutes on 2 cores); `make test` runs a slice.
test-matrix: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_exit_matrix.py -m "slow or not slow"

# The torchvision tests (tests/test_tvcompat.py; they skip elsewhere) in a venv of their own:
# torchvision has no build for the pinned CPU torch 2.13.0, so this one takes torch 2.14.1 and
# torchvision 0.29.1 (on our machines from local disk; about 5.5 GB installed, a CUDA build).
TV_VENV ?= .venv-tv
test-torchvision:
	test -x $(TV_VENV)/bin/python || $(PYTHON) -m venv $(TV_VENV)
	$(TV_VENV)/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" $(TORCH_PIP_ARGS)
	$(TV_VENV)/bin/python -m pip install -q "torch==2.14.1" -e ".[test]"
	$(TV_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_tvcompat.py

clean:
	rm -rf $(VENV) $(TV_VENV) build *.egg-info
