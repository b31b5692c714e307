"""pytest-benchmark suite for the kernels: ``pytest benchmarks/`` (``--benchmark-only`` to skip nothing else).

Files are ``benchmarks/bench_<op>.py`` (collected by the hook below; the project's pytest config only
collects ``tests/test_*.py``), one per op, written by the op's engineer. They take:

* ``backend`` (the repository's conftest.py): "ext" / "cupy", skipping with the reason when no CUDA device is usable;
* ``cuda_device``: the same skip for a benchmark with no backend parameter (a peer library, a copy);
  returns the ``cupy`` module;
* ``gpu_benchmark``: ``gpu_benchmark(fn, inputs, work=..., unit="GB/s")`` times ``fn(inputs[i])``
  with pytest-benchmark's pedantic mode, rotating through ``inputs`` (a list of argument tuples:
  make enough of them to exceed L2, see ``rotation_count``) and synchronizing the stream after each
  call, so the wall time is the kernel's, plus launch overhead. It stores the throughput in
  ``benchmark.extra_info``. For CUDA-event timing against a measured ceiling and a peer library,
  use ``tfm-kernels bench``; this suite is for tracking regressions with pytest-benchmark's
  ``--benchmark-compare``.
"""

from __future__ import annotations

import math

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def rotation_count(footprint_bytes: int, l2_bytes: int = 60 * 2**20, factor: int = 3, cap: int = 24) -> int:
    """How many independent input sets of ``footprint_bytes`` it takes to exceed ``factor`` x L2
    (H200: 60 MiB), so successive calls do not find their inputs in L2."""
    return max(1, min(cap, math.ceil(factor * l2_bytes / max(1, footprint_bytes))))


@pytest.fixture
def cuda_device():
    """``cupy``, once a CUDA device is usable; otherwise skips with the reason."""
    from tfm_kernels import _backend

    if why := _backend.unavailable():
        pytest.skip(why)
    import cupy

    return cupy


@pytest.fixture
def gpu_benchmark(benchmark):
    def run(fn, inputs, *, work: float | None = None, unit: str = "GB/s", rounds: int = 20, warmup: int = 3):
        import cupy

        stream = cupy.cuda.get_current_stream()
        state = {"i": 0}

        def call():
            fn(*inputs[state["i"] % len(inputs)])
            state["i"] += 1
            stream.synchronize()

        result = benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=warmup)
        if work is not None:
            scale = {"GB/s": 1e9, "TFLOP/s": 1e12}[unit]
            benchmark.extra_info["throughput"] = work / benchmark.stats.stats.median / scale
            benchmark.extra_info["unit"] = unit
        return result

    return run
