"""Shared fixtures. GPU tests take the `backend` fixture: it runs them once per backend ("ext", the
pybind11 extension; "cupy", CuPy RawModule over the same source) and skips with the stated reason
when no CUDA device is usable or that backend did not load."""

import zlib

import numpy as np
import pytest


def _status():
    from tfm_kernels import _backend

    return _backend.status()


@pytest.fixture(params=["ext", "cupy"])
def backend(request):
    st = _status()
    ok, why = st["device"]
    if not ok:
        pytest.skip(f"no usable CUDA device: {why}")
    ok, why = st[request.param]
    if not ok:
        pytest.skip(f"backend {request.param!r} unavailable: {why}")
    return request.param


@pytest.fixture
def rng(request):
    # Seeded from the test's id so every failure reproduces, and different tests see different data.
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
