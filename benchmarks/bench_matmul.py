"""benchmarks/bench_matmul.py: pytest-benchmark timings of every matmul variant (the fp32 ladder of
csrc/matmul.cu, the fp16 tensor-core variants of matmul_tc.cu / matmul_sm90.cu) beside cuBLAS
through both libraries a user would call: cupy.matmul and torch.matmul (TF32 off, the default).

    pytest benchmarks/bench_matmul.py --benchmark-columns=median,rounds
    pytest benchmarks/bench_matmul.py -k "8192 and fp32"

Every benchmarked configuration is first checked on 8 sampled rows against numpy_ref in float64
(fp32: 1e-6 * sqrt(K) relative, TF32 at its documented 1e-3 * sqrt(K); fp16: 2x the error of the
same rows computed by NumPy from the fp16 inputs in float32, plus 1e-5). Each timed call launches
and then synchronizes, so the host timer measures the kernel plus a few microseconds of launch
overhead (negligible at these sizes: the smallest takes milliseconds). TFLOP/s
(``costs.matmul_flops`` / median) lands in each result's ``extra_info``. `tfm-kernels bench` is the
CUDA-event-timed runner with tables and plots; this suite is for pytest-benchmark's comparison and
history tools.

Skipped, with the reason, when no CUDA device is usable; slow variants are skipped where a call
would take over ~50 ms at their predicted speed (tfm_kernels/bench/matmul.py: SLOW_TFLOPS).
"""

from __future__ import annotations

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
from tfm_kernels import costs
from tfm_kernels.bench.matmul import MAX_CALL_S, SLOW_TFLOPS

pytest.importorskip("pytest_benchmark")

# (label, M, N, K, trans_a, trans_b): square, and the Transformer's feed-forward GEMMs at
# T = 32768 tokens, d_model = 1024, ff = 4096 (forward x.W^T, dX = dY.W, dW = X^T.dY).
SHAPES = [
    ("4096^3", 4096, 4096, 4096, False, False),
    ("8192^3", 8192, 8192, 8192, False, False),
    ("x.W^T T=32768 d=1024", 32768, 4096, 1024, False, True),
    ("dY.W T=32768 d=1024", 32768, 1024, 4096, False, False),
    ("X^T.dY T=32768 d=1024", 1024, 4096, 32768, True, False),
]
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def _inputs(cp, dt, M, N, K, ta, tb):
    a = cp.random.standard_normal((K, M) if ta else (M, K), dtype=cp.float32).astype(dt)
    b = cp.random.standard_normal((N, K) if tb else (K, N), dtype=cp.float32).astype(dt)
    return a, b, (a.T if ta else a), (b.T if tb else b)


def _check(cp, opa, opb, out, dt, rtol):
    rows = np.unique(np.linspace(0, opa.shape[0] - 1, 8).astype(np.int64))
    ra = cp.asnumpy(opa[cp.asarray(rows)])
    rb = cp.asnumpy(opb)
    ref = numpy_ref.matmul(ra.astype(np.float64), rb.astype(np.float64))
    got = cp.asnumpy(out[cp.asarray(rows)]).astype(np.float64)
    err, scale = np.abs(got - ref).max(), np.abs(ref).max()
    if dt == np.float32:
        tol = rtol * np.sqrt(opa.shape[1]) * scale
    else:
        base = numpy_ref.matmul(ra.astype(np.float32), rb.astype(np.float32)).astype(np.float16)
        tol = 2 * np.abs(base.astype(np.float64) - ref).max() + 1e-5 * scale
    assert err <= tol, f"max err {err:.3e} > tol {tol:.3e}"


def _timed(benchmark, fn, sync, flops: int):
    fn()
    sync()  # warm-up: compiles (cupy) and loads the kernel
    benchmark.pedantic(lambda: (fn(), sync()), rounds=10, iterations=1, warmup_rounds=2)
    benchmark.extra_info["flops"] = flops
    benchmark.extra_info["TFLOP/s"] = flops / benchmark.stats.stats.median / 1e12


# `backend` (the repository's conftest.py): "ext" / "cupy", skipped with the reason when unusable;
# `cuda_device` (benchmarks/conftest.py): the same skip, and the cupy module.
@pytest.mark.parametrize("variant", tfm_kernels.variants("matmul"), ids=lambda v: v.key)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s[0])
def test_matmul_variant(benchmark, shape, dtype, variant, backend, cuda_device):
    cp = cuda_device
    label, M, N, K, ta, tb = shape
    dt = DTYPES[dtype]
    if np.dtype(dt).name not in variant.dtypes:
        pytest.skip(f"{variant.qualname} takes {'/'.join(variant.dtypes)}")
    flops = costs.matmul_flops(M, N, K)
    rate = SLOW_TFLOPS.get(variant.key)
    if rate and flops / (rate * 1e12) > MAX_CALL_S:
        pytest.skip(f"{variant.key}: ~{flops / rate / 1e12:.1f} s per call at {rate} TFLOP/s")
    a, b, opa, opb = _inputs(cp, dt, M, N, K, ta, tb)
    out = cp.empty((M, N), dtype=dt)
    try:
        tfm_kernels.matmul(a, b, ta, tb, backend=backend, variant=variant.key, out=out)
    except (TypeError, ValueError) as e:
        if str(e).startswith("variant:"):
            pytest.skip(str(e))
        raise
    cp.cuda.runtime.deviceSynchronize()
    _check(cp, opa, opb, out, dt, variant.extra.get("rtol", 1e-6))
    benchmark.group = f"matmul {dtype} {label}"
    _timed(benchmark, lambda: tfm_kernels.matmul(a, b, ta, tb, backend=backend, variant=variant.key, out=out),
           cp.cuda.runtime.deviceSynchronize, flops)


@pytest.mark.parametrize("library", ["cupy", "torch"])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s[0])
def test_cublas(benchmark, shape, dtype, library, cuda_device):
    """The peers: cuBLAS through cupy.matmul and through torch.matmul, on the same transposed views
    (both pass the transposes to cuBLAS rather than copying)."""
    cp = cuda_device
    label, M, N, K, ta, tb = shape
    dt = DTYPES[dtype]
    a, b, opa, opb = _inputs(cp, dt, M, N, K, ta, tb)
    if library == "cupy":
        out = cp.empty((M, N), dtype=dt)
        fn, sync = (lambda: cp.matmul(opa, opb, out=out)), cp.cuda.runtime.deviceSynchronize
    else:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("torch has no CUDA here")
        ta_, tb_ = torch.from_dlpack(a), torch.from_dlpack(b)
        x, y = (ta_.T if ta else ta_), (tb_.T if tb else tb_)
        out = torch.empty((M, N), device="cuda", dtype=ta_.dtype)
        fn, sync = (lambda: torch.matmul(x, y, out=out)), torch.cuda.synchronize
    fn()
    sync()
    _check(cp, opa, opb, cp.asarray(out) if library == "cupy" else cp.from_dlpack(out), dt, 1e-6)
    benchmark.group = f"matmul {dtype} {label}"
    _timed(benchmark, fn, sync, costs.matmul_flops(M, N, K))
