# The two commands the README opens with:
#   make demo   set up .venv from scratch and run the main job (train the NumPy reference Transformer)
#   make test   set up .venv from scratch, build the CUDA extension with nvcc, run the whole test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup ext demo test check bench gpu-check clean

# torch==2.13.0 first: on these machines it is the CPU build on local disk, and installing it before
# the extras keeps pip from resolving `torch` to a multi-GB CUDA build. The editable install skips
# the CUDA extension (TFM_SKIP_EXT=1); the `ext` step builds it in place instead, so its nvcc objects
# live in build/ and are reused by the next `make test` (pip's isolated build would throw them away).
$(BIN)/.stamp: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q "setuptools>=77" wheel "pybind11>=2.12"
	TFM_SKIP_EXT=1 $(BIN)/pip install -q -e ".[test,gpu]"
	touch $@

setup: $(BIN)/.stamp

# nvcc build of tfm_kernels._ext (every csrc/*.cu; archs from TFM_CUDA_ARCHS, default "80;90");
# only changed sources recompile. Without nvcc it says so and the CuPy backend is used alone.
ext: setup
	$(BIN)/python setup.py -q build_ext --inplace

demo: setup
	$(BIN)/tfm-kernels train

test: ext
	$(BIN)/python -m pytest -q

check: ext
	$(BIN)/tfm-kernels check

bench: ext
	$(BIN)/tfm-kernels bench --quick

# The one-call GPU check (scripts/gpu_check.sh) for a CUDA machine; results land in OUT.
OUT ?= build/gpu_check
gpu-check:
	bash scripts/gpu_check.sh $(OUT)

clean:
	rm -rf $(VENV) build *.egg-info tfm_kernels/*.so
