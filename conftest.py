"""Fixtures shared by tests/ and benchmarks/."""

import pytest


@pytest.fixture(params=["ext", "cupy"])
def backend(request):
    """Runs a GPU test once per backend ("ext": the pybind11 extension; "cupy": CuPy RawModule over
    the same source); skips with the stated reason when no CUDA device is usable or that backend did
    not load."""
    from tfm_kernels import _backend

    if why := _backend.unavailable(request.param):
        pytest.skip(why)
    return request.param
