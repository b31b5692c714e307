# The two commands the README opens with:
#   make demo   set up .venv from scratch and run the main job (train the NumPy reference Transformer)
#   make test   set up .venv from scratch, build the CUDA extension with nvcc, run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test check bench gpu-check clean

# torch==2.13.0 first: on these machines it is the CPU build on local disk, and installing it before
# the extras keeps pip from resolving `torch` to a multi-GB CUDA build.
$(BIN)/.stamp: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,gpu]"
	touch $@

setup: $(BIN)/.stamp

demo: setup
	$(BIN)/tfm-kernels train

test: setup
	$(BIN)/python -m pytest -q

check: setup
	$(BIN)/tfm-kernels check

bench: setup
	$(BIN)/tfm-kernels bench --quick

clean:
	rm -rf $(VENV) build *.egg-info tfm_kernels/*.so
