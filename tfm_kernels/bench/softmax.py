"""Benchmark cases of softmax and softmax_backward for ``tfm-kernels bench`` (protocol: core.py).

Every case moves the same 2**26 elements (256 MiB of fp32 in, 256 MiB out: 5x the H200's L2), laid
out as rows x cols from 65536 x 1024 to 256 x 262144, so a plot reads as "throughput against row
length at fixed work". Bytes are ``costs.softmax_bytes`` (read x, write y) and
``costs.softmax_backward_bytes`` (read y and dy, write dx): the minimum each op must move, so the
percentage of the measured copy bandwidth is how close a variant is to the memory roofline.

Peer: ``torch.softmax`` and ``torch._softmax_backward_data`` (the kernel autograd calls) on the same
device buffers (zero-copy through DLPack). Verification: 16 sampled rows against numpy_ref in
float64, at the test suite's tolerances.
"""

from __future__ import annotations

import numpy as np

from .. import costs
from .core import BenchCase, cuda_torch

TOTAL = 1 << 26
FULL_COLS = (256, 1024, 4096, 8192, 16384, 32768, 65536, 262144)
# Quick (the GPU check: an ~18 s share of a 55 s budget, checked between cases): the target shape
# first, forward and backward side by side.
QUICK = (("float32", 8192), ("float32", 1024), ("float16", 8192), ("float32", 65536))
# A thread per row leaves most of an H200 idle below ~16k rows (132 SMs x 128 threads) and then
# takes seconds per call; it is timed only where it has that many rows.
NAIVE_MIN_ROWS = 8192


def _sample(rows: int):
    return np.unique(np.linspace(0, rows - 1, 16).astype(np.int64))


def _refuse_naive(variant: str, rows: int) -> None:
    if variant == "1_naive" and rows < NAIVE_MIN_ROWS:
        raise ValueError(f"variant: 1_naive is not timed with {rows} rows (< {NAIVE_MIN_ROWS}: a thread "
                         f"per row leaves most SMs idle and takes seconds per call)")


def _verdict(out: np.ndarray, ref: np.ndarray, baseline: np.ndarray | None, reduction: int) -> str | None:
    from ..check import fp32_rule, lowprec_rule

    rule = fp32_rule(reduction=reduction) if baseline is None else lowprec_rule(baseline)
    ok, mx, tol = rule(out, ref)
    return None if ok else f"max err {mx:.3e} > tol {tol:.3e} on 16 sampled rows"


def _forward_case(dtype: str, rows: int, cols: int, torch) -> BenchCase:
    import numpy_ref

    from ..softmax import softmax

    def make_inputs():
        import cupy as cp

        x = cp.random.standard_normal((rows, cols), dtype=cp.float32).astype(dtype)
        return {"x": x, "out": cp.empty_like(x), "xt": torch.from_dlpack(x) if torch else None}

    def run(inp, backend, variant):
        _refuse_naive(variant, rows)
        return softmax(inp["x"], backend=backend, variant=variant, out=inp["out"])

    def verify(inp, out):
        import cupy as cp

        idx = cp.asarray(_sample(rows))
        x = cp.asnumpy(inp["x"][idx])
        ref = numpy_ref.softmax(x.astype(np.float64))
        base = None if dtype == "float32" else numpy_ref.softmax(x.astype(np.float32)).astype(np.float16)
        return _verdict(cp.asnumpy(out[idx]), ref, base, cols)

    return BenchCase(
        op="softmax", label=f"{rows}x{cols} {dtype}", series=f"{dtype}, {TOTAL >> 20}M elements",
        x=cols, x_label="row length (elements; rows x cols fixed)", unit="GB/s",
        work=costs.softmax_bytes(rows, cols, dtype), footprint=2 * TOTAL * np.dtype(dtype).itemsize,
        make_inputs=make_inputs, run=run, verify=verify,
        peer=(lambda inp: torch.softmax(inp["xt"], dim=-1)) if torch else None,
        peer_name="torch.softmax" if torch else None)


def _backward_case(dtype: str, rows: int, cols: int, torch) -> BenchCase:
    import numpy_ref

    from ..softmax import backward_rule, softmax, softmax_backward

    def make_inputs():
        import cupy as cp

        y = softmax(cp.random.standard_normal((rows, cols), dtype=cp.float32).astype(dtype))
        dy = cp.random.standard_normal((rows, cols), dtype=cp.float32).astype(dtype)
        d = {"y": y, "dy": dy, "out": cp.empty_like(y)}
        if torch:
            d["yt"], d["dyt"] = torch.from_dlpack(y), torch.from_dlpack(dy)
        return d

    def run(inp, backend, variant):
        _refuse_naive(variant, rows)
        return softmax_backward(inp["dy"], inp["y"], backend=backend, variant=variant, out=inp["out"])

    def verify(inp, out):
        import cupy as cp

        idx = cp.asarray(_sample(rows))
        y, dy = cp.asnumpy(inp["y"][idx]), cp.asnumpy(inp["dy"][idx])
        ref = numpy_ref.softmax_backward(dy.astype(np.float64), y.astype(np.float64))
        base = (None if dtype == "float32" else
                numpy_ref.softmax_backward(dy.astype(np.float32), y.astype(np.float32)).astype(np.float16))
        ok, mx, tol = backward_rule(dy, y, base)(cp.asnumpy(out[idx]), ref)
        return None if ok else f"max err {mx:.3e} > tol {tol:.3e} on 16 sampled rows"

    def peer(inp):
        return torch._softmax_backward_data(inp["dyt"], inp["yt"], -1, inp["yt"].dtype)

    return BenchCase(
        op="softmax_backward", label=f"{rows}x{cols} {dtype}", series=f"{dtype}, {TOTAL >> 20}M elements",
        x=cols, x_label="row length (elements; rows x cols fixed)", unit="GB/s",
        work=costs.softmax_backward_bytes(rows, cols, dtype), footprint=3 * TOTAL * np.dtype(dtype).itemsize,
        make_inputs=make_inputs, run=run, verify=verify,
        peer=peer if torch else None, peer_name="torch._softmax_backward_data" if torch else None)


def cases(quick: bool):
    torch = cuda_torch()
    configs = QUICK if quick else [(dt, c) for dt in ("float32", "float16") for c in FULL_COLS]
    for dtype, cols in configs:
        yield _forward_case(dtype, TOTAL // cols, cols, torch)
        yield _backward_case(dtype, TOTAL // cols, cols, torch)
