"""benchmarks/bench_softmax.py: pytest-benchmark timings of the softmax ladders (csrc/softmax.cu)
beside torch.softmax and a device-to-device copy of the same bytes (the bandwidth ceiling).

    pytest benchmarks/bench_softmax.py --benchmark-columns=median,rounds
    pytest benchmarks/bench_softmax.py -k "8192x8192 and fp32"

Every benchmarked configuration is first checked against numpy_ref (fp32: 1e-6 * sqrt(cols)
relative, on a sampled set of rows; fp16: 2e-3 relative). Each timed call launches and then
synchronizes the device, so the host-side timer of pytest-benchmark measures the kernel (plus a few
microseconds of launch overhead: compare shapes of at least tens of MiB). The effective bandwidth,
``costs.softmax_bytes`` / median time (read x + write y; backward reads y, dy and writes dx), is
stored in each result's ``extra_info["GB/s"]``. `tfm-kernels bench` is the CUDA-event-timed runner
with tables and plots; this suite is for pytest-benchmark's comparison and history tools.

Skipped, with the reason, when no CUDA device is usable.
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
from tfm_kernels import costs

pytest.importorskip("pytest_benchmark")

SHAPES = [(16384, 1024), (8192, 8192), (1024, 65536)]
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def _sync():
    import cupy

    cupy.cuda.runtime.deviceSynchronize()


def _timed(benchmark, fn, nbytes: int):
    fn()
    _sync()  # warm-up: compiles (cupy) and loads the kernel
    benchmark.pedantic(lambda: (fn(), _sync()), rounds=30, iterations=1, warmup_rounds=3)
    median = benchmark.stats.stats.median
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["GB/s"] = nbytes / median / 1e9


def _sample_rows(rows: int) -> np.ndarray:
    return np.unique(np.linspace(0, rows - 1, 16).astype(np.int64))


def _check_fwd(x, y, dtype):
    import cupy as cp

    idx = _sample_rows(x.shape[0])
    xs = cp.asnumpy(x[cp.asarray(idx)]).astype(np.float64)
    ys = cp.asnumpy(y[cp.asarray(idx)]).astype(np.float64)
    ref = numpy_ref.softmax(xs)
    rtol = 1e-6 * np.sqrt(x.shape[1]) if dtype == np.float32 else 2e-3
    err = np.abs(ys - ref).max()
    assert err <= rtol * np.abs(ref).max(), f"max err {err:.3e}"


def _check_bwd(dy, y, dx, dtype):
    import cupy as cp

    idx = cp.asarray(_sample_rows(y.shape[0]))
    ref = numpy_ref.softmax_backward(cp.asnumpy(dy[idx]).astype(np.float64), cp.asnumpy(y[idx]).astype(np.float64))
    got = cp.asnumpy(dx[idx]).astype(np.float64)
    rtol = 1e-6 * np.sqrt(y.shape[1]) if dtype == np.float32 else 4e-3
    err = np.abs(got - ref).max()
    assert err <= rtol * np.abs(ref).max(), f"max err {err:.3e}"


def _ids(shape):
    return f"{shape[0]}x{shape[1]}"


def _checked_and_timed(benchmark, call, check, group: str, nbytes: int):
    """Every timed configuration is first validated: an untimed first call (a variant that declines
    the shape, ValueError "variant: ...", e.g. a row too long for registers, skips the benchmark
    with its reason), `check` of its output against numpy_ref, then the timing."""
    try:
        call()
    except ValueError as e:
        if str(e).startswith("variant:"):
            pytest.skip(str(e))
        raise
    check()
    benchmark.group = group
    _timed(benchmark, call, nbytes)


def _params(op: str):
    """variant x dtype x shape, the softmax variants from 2 on (1 takes seconds per call here)."""
    def mark(f):  # applied innermost first, as stacked decorators are: ids read shape-dtype-variant
        f = pytest.mark.parametrize("shape", SHAPES, ids=_ids)(f)
        f = pytest.mark.parametrize("dtype", list(DTYPES), ids=str)(f)
        return pytest.mark.parametrize("variant", [v.key for v in tfm_kernels.variants(op) if v.number >= 2])(f)
    return mark


# `backend` (the repository's conftest.py): "ext" / "cupy", skipped with the reason when unusable;
# `cuda_device` (benchmarks/conftest.py): the same skip for the benchmarks without a backend.
@_params("softmax")
def test_softmax_forward(benchmark, shape, dtype, variant, backend):
    import cupy as cp

    dt = DTYPES[dtype]
    x = cp.random.standard_normal(shape, dtype=cp.float32).astype(dt)
    y = cp.empty_like(x)
    _checked_and_timed(benchmark, lambda: tfm_kernels.softmax(x, backend=backend, variant=variant, out=y),
                       lambda: _check_fwd(x, y, dt), f"softmax fwd {dtype} {_ids(shape)}",
                       costs.softmax_bytes(*shape, np.dtype(dt).name))


@_params("softmax_backward")
def test_softmax_backward(benchmark, shape, dtype, variant, backend):
    import cupy as cp

    dt = DTYPES[dtype]
    y = tfm_kernels.softmax(cp.random.standard_normal(shape, dtype=cp.float32).astype(dt))
    dy = cp.random.standard_normal(shape, dtype=cp.float32).astype(dt)
    dx = cp.empty_like(y)
    _checked_and_timed(benchmark, lambda: tfm_kernels.softmax_backward(dy, y, backend=backend, variant=variant, out=dx),
                       lambda: _check_bwd(dy, y, dx, dt), f"softmax bwd {dtype} {_ids(shape)}",
                       costs.softmax_backward_bytes(*shape, np.dtype(dt).name))


@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_torch_softmax(benchmark, shape, dtype, direction, cuda_device):
    """The peer: torch.softmax and its backward kernel (torch._softmax_backward_data)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    tdt = {"fp32": torch.float32, "fp16": torch.float16}[dtype]
    x = torch.randn(shape, device="cuda", dtype=torch.float32).to(tdt)
    y = torch.softmax(x, dim=-1)
    dy = torch.randn_like(y)
    rows, cols = shape
    name = np.dtype(DTYPES[dtype]).name
    benchmark.group = f"softmax {direction} {dtype} {_ids(shape)}"
    if direction == "fwd":
        fn, nbytes = (lambda: torch.softmax(x, dim=-1)), costs.softmax_bytes(rows, cols, name)
    else:
        fn = lambda: torch._softmax_backward_data(dy, y, -1, tdt)  # noqa: E731
        nbytes = costs.softmax_backward_bytes(rows, cols, name)
    sync = torch.cuda.synchronize
    fn()
    sync()
    benchmark.pedantic(lambda: (fn(), sync()), rounds=30, iterations=1, warmup_rounds=3)
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["GB/s"] = nbytes / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_copy_ceiling(benchmark, shape, dtype, cuda_device):
    """A device-to-device copy of x's bytes: read + write, the most a forward softmax can reach."""
    cp = cuda_device
    x = cp.empty(shape, dtype=DTYPES[dtype])
    y = cp.empty_like(x)
    benchmark.group = f"softmax fwd {dtype} {_ids(shape)}"
    _timed(benchmark, lambda: cp.copyto(y, x), costs.copy_bytes(x.nbytes))
