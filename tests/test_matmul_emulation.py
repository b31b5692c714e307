"""tests/test_matmul_emulation.py: csrc/matmul.cu and csrc/matmul_tc.cu themselves, compiled for
the CPU and run through every variant's own launch plan, against numpy_ref. No GPU needed (g++ >= 12).

tests/_emulate_cuda.py builds each source on tests/cuda_host/cuda_host.h: a fiber per CUDA thread,
one CTA at a time, shared memory poisoned with NaN before each CTA, cp.async copies landing only at
the wait that retires them, ldmatrix and mma.sync computed for the whole warp from the PTX ISA's
fragment layouts, and (sm_90a) mbarriers, TMA boxes with their 128-byte swizzle and wgmma from its
descriptors. So the fp32 ladder (1-9, TF32 included), the fp16 mma.sync variants (10, 11) and the
warp-specialised wgmma variants (12, 13: producer/consumer mbarrier ring, persistent tile loop)
run their real index maps, edge guards, vector/scalar tile paths and pipelines here. Each case
runs with each CTA's threads scheduled first to last and again last to first: a missing barrier
between a shared-memory write and another thread's read shows in one of the two; in the second,
TMA bytes land only when their barrier is waited on, in the first at once (so a stage refilled
while its wgmma may still read it shows).

Shapes are smaller than the GPU tests' (an emulated thread costs a microsecond per barrier), but
cover what the kernels branch on: a tile's edge in every dimension, K below and not a multiple of
BK, the multi-stage rings' prologue with fewer k-tiles than stages, aligned and misaligned rows
(16-byte vector paths and their scalar fallbacks), batches, all four layouts, both fp16 output
dtypes.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
from helpers import POISON, assert_close_lowprec
from test_matmul import LAYOUT_IDS, LAYOUTS
from test_matmul import _check as check_fp32

mm = importlib.import_module("tfm_kernels.matmul")
mtc = importlib.import_module("tfm_kernels.matmul_tc")

emu = pytest.importorskip("_emulate_cuda")

SOURCES = ("matmul.cu", "matmul_tc.cu", "matmul_sm90.cu")
VARIANTS = [v for v in tfm_kernels.variants("matmul") if {s for s, _ in v.kernels} <= set(SOURCES)]

# (M, N, K): one element; smaller than every tile with K < BK; ragged edges everywhere with K = 17
# (one partial k-tile) and 67 (a ring shorter than its stages, then a tail); the 128-tiles' edge.
SHAPES = [(1, 1, 1), (7, 5, 3), (33, 18, 17), (20, 36, 67), (129, 130, 40)]
# Multiples of 8 in every dimension: the aligned 16-byte (and cp.async 16) paths, and the shapes
# TMA can read (the wgmma variants take only these): a tile's edge in M, N and K (K = 72 = 64 + 8),
# and 3 x 2 tiles of 128 x 256 (with the SM count set to 1, variant 13's one CTA walks all six).
ALIGNED = [(16, 24, 40), (136, 64, 72), (264, 264, 136)]


@pytest.fixture(scope="module")
def libs():
    built = emu.build(SOURCES)
    for s, lib in built.items():
        if isinstance(lib, str):
            pytest.skip(f"host emulation unavailable: {lib}")
    return built


@pytest.fixture(params=["forward", "reverse"])
def be(request, libs, monkeypatch):
    """The emulated backend; the wgmma plans get the emulator's TMA descriptors (the driver's
    encoder needs a GPU) and an SM count of 1 (variant 13: one persistent CTA, every tile)."""
    monkeypatch.setattr(mtc, "tma_descriptor", emu.tma_descriptor)
    monkeypatch.setattr(mtc, "_sm_count", lambda device_id: 1)
    return emu.HostBackend(request.param, libs)


def _operands(rng, M, N, K, ta, tb, dtype, batch=0):
    lead = (batch,) if batch else ()
    a = rng.standard_normal(lead + ((K, M) if ta else (M, K))).astype(dtype)
    b = rng.standard_normal(lead + ((N, K) if tb else (K, N))).astype(dtype)
    return a, b


def _view(a, off):
    """`a` copied `off` elements into a NaN-filled buffer with 64 NaN guard elements after it
    (off = 1: every row start misaligned for 16-byte loads)."""
    buf = np.full(a.size + off + 64, np.nan, a.dtype)
    v = buf[off:off + a.size].reshape(a.shape)
    v[...] = a
    return emu.host_array(v), buf


def _run(be, variant, a, b, ta, tb, out_dtype, off=0):
    """The variant on views `off` elements into NaN-guarded buffers, or None when it declines the
    arguments (what the op would refuse: the wgmma variants take 16-byte aligned rows only)."""
    M = a.shape[-1] if ta else a.shape[-2]
    N = b.shape[-2] if tb else b.shape[-1]
    K = a.shape[-2] if ta else a.shape[-1]
    av, _ = _view(a, off)
    bv, _ = _view(b, off)
    out, obuf = _view(np.full(a.shape[:-2] + (M, N), POISON, out_dtype), off)
    info = dict(M=M, N=N, K=K, batch=a.shape[0] if a.ndim == 3 else 1, trans_a=ta, trans_b=tb,
                out_dtype=np.dtype(out_dtype).name, align=mm._align(av.data.ptr, bv.data.ptr, out.data.ptr))
    if variant.reason_unsupported(dtype=a.dtype.name, **info):
        return None
    variant.fn(be, av, bv, ta, tb, out)
    tail = obuf[off + out.size:]
    assert np.isnan(obuf[:off]).all() and np.isnan(tail).all(), "wrote outside out"
    return np.array(out)


def _check(variant, out, a, b, ta, tb, what):
    """fp16: no worse than 2x NumPy's fp32 product of the same fp16 inputs; fp32 (and TF32): the
    GPU tests' rule (tests/test_matmul.py)."""
    if a.dtype != np.float16:
        return check_fp32(out, a, b, ta, tb, variant, what)
    ref = numpy_ref.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb)
    base = numpy_ref.matmul(a.astype(np.float32), b.astype(np.float32), ta, tb).astype(out.dtype)
    assert_close_lowprec(out, ref, base, what=what)


@pytest.mark.slow
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.key)
def test_host_emulation(variant, ta, tb, be, rng):
    """Every emulable variant, one layout, every shape above (aligned and misaligned buffers where
    the variant has vector paths), a batch of 2; the kernels of this layout all ran."""
    dtype = np.float16 if "float16" in variant.dtypes else np.float32
    out_dtypes = (np.float16, np.float32) if dtype == np.float16 else (np.float32,)
    cases = [(s, 0, 0) for s in SHAPES] + [(s, 0, 1) for s in ALIGNED] + [((33, 18, 17), 2, 0)]
    if variant.number >= 6:
        cases += [(s, 0, 0) for s in ALIGNED] + [((136, 64, 72), 2, 0)]
    if variant.number in (12, 13):  # 9 M-tiles: the grouped tile order's partial second group of 8
        cases += [((1100, 264, 8), 0, 0)]
    if variant.number == 14:  # the tile iterators: a partial row group at the m (NN, NT) or n (NT,
        # TT) edge, K = 4 (only the k-edge tile), K = 64 (no k-edge tile: the tail steps load nothing)
        cases += [((130, 68, 20), 0, 0), ((68, 130, 36), 0, 0), ((132, 68, 4), 0, 0), ((68, 36, 64), 0, 0)]
    ran = 0
    for (M, N, K), batch, off in cases:
        a, b = _operands(rng, M, N, K, ta, tb, dtype, batch)
        for od in out_dtypes:
            what = (f"{variant.qualname} emulated ({be.order}) M={M} N={N} K={K} batch={batch} ta={ta} tb={tb} "
                    f"out={np.dtype(od).name} offset={off}")
            out = _run(be, variant, a, b, ta, tb, od, off)
            if out is None:
                continue
            _check(variant, out, a, b, ta, tb, what)
            ran += 1
    assert ran >= 2
    suffix = f"{'true' if ta else 'false'}, {'true' if tb else 'false'}>"
    mine = {k for _, k in variant.kernels if suffix in k}
    assert mine <= be.launched, sorted(mine - be.launched)


@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
def test_split_k(ta, tb, be, rng, monkeypatch):
    """Variant 15 with K split 4 ways (one output tile, 17 k-tiles: splits of 5, 5, 5 and 2, the
    last holding the k-edge tile), 2 ways on a batch of 2 with a tile edge in M, and with partial
    row groups at the m edge (NN, NT): every split's slice of the workspace, summed in order by
    matmul_split_reduce, makes the product. An SM count of 8 stands for the GPU's (16 CTA slots)."""
    monkeypatch.setattr(mtc, "_sm_count", lambda device_id: 8)
    variant = tfm_kernels._registry.get("matmul", 15)
    ran = 0
    # (65, 37): M N odd, the reduction's scalar path (NT only: the other layouts store M or N rows)
    for (M, N, K), batch, splits in (((68, 36, 260), 0, 4), ((132, 68, 132), 2, 2), ((130, 36, 260), 0, 4),
                                     ((65, 37, 260), 0, 4)):
        assert mm.iter_splits(M, N, K, max(batch, 1), 8) == splits
        a, b = _operands(rng, M, N, K, ta, tb, np.float32, batch)
        before = len(be.launches)
        out = _run(be, variant, a, b, ta, tb, np.float32)
        if out is None:  # 130, 65, 37: stored rows not a multiple of 4 in this layout
            continue
        ln, red = be.launches[before:]
        assert ln.grid[2] == max(batch, 1) * splits and int(ln.args[-1]) == splits
        assert red.kernel == "matmul_split_reduce" and int(red.args[-1]) == splits
        _check(variant, out, a, b, ta, tb, f"{variant.qualname} emulated ({be.order}) M={M} N={N} K={K} "
                                           f"batch={batch} splits={splits} ta={ta} tb={tb}")
        ran += 1
    assert ran >= 2


@pytest.mark.slow
@pytest.mark.parametrize("be", ["forward"], indirect=True)  # bounds do not depend on the order
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.key)
def test_host_memcheck(variant, be, rng):
    """A, B and C each between inaccessible pages (tests/_emulate_cuda.py `guarded`), all four
    layouts: a read or write even one element past a matrix stops the launch (no sanitizer has run
    matmul on a GPU yet). Once with each matrix's last element against the page (edge tiles' scalar
    guards), once 16-byte aligned (the vector, cp.async and TMA paths); results checked too."""
    dtype = np.float16 if "float16" in variant.dtypes else np.float32
    ran = 0
    for M, N, K in ((7, 5, 3), (33, 18, 17), (136, 64, 72), (130, 66, 20)):
        for ta, tb in LAYOUTS:
            a, b = _operands(rng, M, N, K, ta, tb, dtype)
            for align in (None, 16):
                av, bv = emu.guarded(a, align), emu.guarded(b, align)
                out = emu.guarded(np.full((M, N), POISON, dtype), align)
                info = dict(M=M, N=N, K=K, batch=1, trans_a=ta, trans_b=tb, out_dtype=np.dtype(dtype).name,
                            align=mm._align(av.data.ptr, bv.data.ptr, out.data.ptr))
                if variant.reason_unsupported(dtype=np.dtype(dtype).name, **info):
                    continue
                variant.fn(be, av, bv, ta, tb, out)
                _check(variant, np.array(out), a, b, ta, tb,
                       f"{variant.qualname} memcheck ({be.order}) M={M} N={N} K={K} ta={ta} tb={tb} align={align}")
                ran += 1
    assert ran >= 4


@pytest.mark.parametrize("be", ["forward"], indirect=True)
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
def test_ldmatrix_bank_conflicts(ta, tb, be, rng):
    """The shared-memory bank conflicts of the real kernels' ldmatrix addresses, counted by the
    emulator per 8-row phase: variant 11's XOR-swizzled tiles touch all 8 16-byte bank groups in
    every phase (one wavefront: conflict-free); variant 10's plain tiles touch 2 (K-major: a 4-way
    conflict) or 1 (M/N-major: 8-way), the conflicts csrc/matmul_tc.cu's header documents."""
    a, b = _operands(rng, 136, 64, 72, ta, tb, np.float16)
    seen = {}
    for number in (10, 11):
        variant = tfm_kernels._registry.get("matmul", number)
        before = {k: list(v) for k, v in be.ldmatrix_phases.items()}
        assert _run(be, variant, a, b, ta, tb, np.float32) is not None
        (kernel,) = [k for k in be.ldmatrix_phases if be.ldmatrix_phases[k] != before.get(k)]
        seen[number] = {g for g, n in enumerate(be.ldmatrix_phases[kernel]) if n}
    assert seen[11] == {8}, seen
    assert seen[10] <= {1, 2}, seen
