"""tests/test_softmax_emulation.py: csrc/softmax.cu itself, compiled for the CPU and run through
every softmax variant's own launch plan, against numpy_ref. No GPU needed (g++ >= 12).

tests/_emulate_cuda.py builds the real kernel source on tests/cuda_host/cuda_host.h: a fiber per
CUDA thread, one block at a time (one cluster of blocks at a time for forward 7, each block with its
own shared memory, the others reaching it through cluster_map), barriers for __syncthreads and the
cluster barrier, warp shuffles computed for the whole warp, _Float16 for __half. Each case runs
with the threads scheduled first to last and again last to first, so a missing barrier shows. The
variants' fn (tfm_kernels/softmax.py) plan their launches from
NumPy buffers' addresses exactly as from device pointers, so the vector-path decisions, the grouped
rows, the grid-stride loops (grid capped at 3 blocks here) and the -inf handling all run as
written. Every kernel csrc/softmax.cu exports must run at least once. Marked slow (about two minutes
on two cores); kept out of test_softmax.py so the GPU run's per-file time cap is not spent on it.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import tfm_kernels
from test_softmax import DTYPE_IDS, _backward_inputs, _check_bwd, _check_fwd, _inputs, cluster_slice_inputs

sm = importlib.import_module("tfm_kernels.softmax")
VARIANTS = tfm_kernels.variants("softmax") + tfm_kernels.variants("softmax_backward")

EMU_SHAPES = [(3, 1), (5, 3), (3, 8), (3, 17), (3, 24), (3, 31), (3, 33), (2, 97), (2, 512), (2, 1000),
              (2, 1024), (2, 1025), (2, 2048), (2, 4096), (1, 4097), (1, 8192), (1, 8193), (1, 16384),
              (1, 16385), (1, 32768), (1, 40000)]
# Forward 7 (softmax_fwd_cluster) has its own thresholds (sm.cluster_plan), and every launch is at
# least 2 x 512 emulated threads (up to 8 x 1024), so it gets its own list: tiny and odd rows (CTA 1
# with an empty slice), each plan (2, 4, 8 CTAs of 512, 8 of 1024) with 16-byte packs (the aligned
# pattern) and scalar (shifted, mixed); several rows per cluster walk the row loop (the grid capped
# at 3 blocks is one cluster).
EMU_CLUSTER_SHAPES = [(3, 1), (3, 17), (1, 4097), (2, 32768), (1, 40000), (2, 131072), (1, 131080)]
# (value pattern, element offsets of (input, [input,] out) into their buffers): aligned (vector
# paths), all shifted by one element (scalar head for the streaming kernels, scalar register
# kernels), input and output differently aligned (scalar everywhere).
EMU_PATTERNS = (("normal", (0, 0, 0)), ("masked", (1, 1, 1)), ("large", (0, 1, 0)))


@pytest.fixture(scope="module", params=["forward", "reverse"])
def host_emulation(request):
    import _emulate_cuda as emu

    lib = emu.build(["softmax.cu"])["softmax.cu"]
    if isinstance(lib, str):
        pytest.skip(f"host emulation unavailable: {lib}")
    return emu, emu.HostBackend(request.param, {"softmax.cu": lib})


def _host_view(a, off):
    """`a` copied `off` elements into a NaN-filled buffer with 64 NaN guard elements after it."""
    buf = np.full(a.size + off + 64, np.nan, a.dtype)
    v = buf[off:off + a.size].reshape(a.shape)
    v[...] = a
    return v, buf


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.qualname)
def test_host_emulation_of_every_kernel(variant, host_emulation, rng, monkeypatch):
    """Every variant's own launch plan, run on the host emulation of csrc/softmax.cu with the grid
    capped at 3 blocks, both dtypes, every planning threshold, aligned / shifted / mixed-alignment
    buffers: the numpy_ref tolerances of the GPU tests, exact zeros under masks, and nothing
    written outside the output."""
    emu, be = host_emulation
    monkeypatch.setattr(sm, "MAX_GRID", 3)
    before = set(be.launched)
    for rows, cols in EMU_CLUSTER_SHAPES if variant.name == "cluster" else EMU_SHAPES:
        if variant.reason_unsupported(dtype="float32", rows=rows, cols=cols):
            continue
        for dtype in (np.float32, np.float16):
            for kind, offs in EMU_PATTERNS:
                what = f"{variant.qualname} emulated {DTYPE_IDS[dtype]} {rows}x{cols} {kind} offsets {offs}"
                if variant.op == "softmax":
                    x = _inputs(rng, rows, cols, dtype, kind)
                    xv, _ = _host_view(x, offs[0])
                    ov, obuf = _host_view(np.full(x.shape, np.nan, dtype), offs[1])
                    variant.fn(be, emu.host_array(xv), emu.host_array(ov))
                    _check_fwd(ov.copy(), x, dtype, what)
                    o = offs[1]
                else:
                    dy, y = _backward_inputs(rng, rows, cols, dtype, kind)
                    dyv, _ = _host_view(dy, offs[0])
                    yv, _ = _host_view(y, offs[1])
                    ov, obuf = _host_view(np.full(y.shape, np.nan, dtype), offs[2])
                    variant.fn(be, emu.host_array(dyv), emu.host_array(yv), emu.host_array(ov))
                    _check_bwd(ov.copy(), dy, y, dtype, what)
                    o = offs[2]
                assert np.isnan(obuf[:o]).all() and np.isnan(obuf[o + rows * cols:]).all(), \
                    f"{what}: wrote outside out"
    # Every instantiation this variant lists ran at least once.
    mine = {k for _, k in variant.kernels}
    assert mine <= be.launched, sorted(mine - be.launched)
    assert be.launched - before <= mine | before


@pytest.mark.slow
def test_host_emulation_cluster_slices(host_emulation, rng, monkeypatch):
    """Forward 7 on the host emulation (a thread per CUDA thread, the C blocks of a cluster at once,
    each with its own shared memory, reached by the others through cluster_map): masks and maxima
    placed on its CTA slices (test_softmax.cluster_slice_inputs), every cluster plan, aligned and
    shifted buffers (fp32 aligned: packs; fp16 shifted: scalar), grid capped at 3 blocks (row loops
    on every plan)."""
    emu, be = host_emulation
    monkeypatch.setattr(sm, "MAX_GRID", 3)
    v = tfm_kernels._registry.get("softmax", 7)
    for rows, cols in ((4, 1), (5, 17), (4, 32769), (3, 65537), (3, 131073)):
        for dtype, off in ((np.float32, 0), (np.float16, 1)):  # 16-byte packs, then scalar
                x = cluster_slice_inputs(rng, rows, cols, dtype)
                xv, _ = _host_view(x, off)
                ov, obuf = _host_view(np.full(x.shape, np.nan, dtype), off)
                v.fn(be, emu.host_array(xv), emu.host_array(ov))
                what = f"{v.qualname} emulated {DTYPE_IDS[dtype]} {rows}x{cols} slices offset {off}"
                _check_fwd(ov.copy(), x, dtype, what)
                assert np.isnan(obuf[:off]).all() and np.isnan(obuf[off + x.size:]).all(), f"{what}: wrote outside out"


MEMCHECK_SHAPES = [(3, 1), (3, 17), (2, 33), (2, 1000), (1, 1025), (1, 4097), (1, 16385)]


@pytest.mark.slow
@pytest.mark.parametrize("host_emulation", ["forward"], indirect=True)  # bounds do not depend on the order
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.qualname)
def test_host_memcheck(variant, host_emulation, rng, monkeypatch):
    """Every buffer between inaccessible pages (tests/_emulate_cuda.py `guarded`): a read or write
    even one element past a buffer's end stops the launch (no sanitizer has run softmax on a GPU
    yet). Each buffer once with its last element against the page (the scalar and tail paths) and
    once 16-byte aligned (the vector paths); the results checked too."""
    emu, be = host_emulation
    monkeypatch.setattr(sm, "MAX_GRID", 3)
    shapes = EMU_CLUSTER_SHAPES[:4] if variant.name == "cluster" else MEMCHECK_SHAPES
    for rows, cols in shapes:
        if variant.reason_unsupported(dtype="float32", rows=rows, cols=cols):
            continue
        for dtype in (np.float32, np.float16):
            for align in (None, 16):
                what = f"{variant.qualname} memcheck {DTYPE_IDS[dtype]} {rows}x{cols} align {align}"
                if variant.op == "softmax":
                    x = _inputs(rng, rows, cols, dtype, "normal")
                    out = emu.guarded(np.full(x.shape, np.nan, dtype), align)
                    variant.fn(be, emu.guarded(x, align), out)
                    _check_fwd(np.array(out), x, dtype, what)
                else:
                    dy, y = _backward_inputs(rng, rows, cols, dtype, "normal")
                    out = emu.guarded(np.full(y.shape, np.nan, dtype), align)
                    variant.fn(be, emu.guarded(dy, align), emu.guarded(y, align), out)
                    _check_bwd(np.array(out), dy, y, dtype, what)
