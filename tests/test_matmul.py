"""tests/test_matmul.py: the fp32 matmul ladder (csrc/matmul.cu) and the `tfm_kernels.matmul` API.

* Validation (no GPU needed): every bad argument raises TypeError/ValueError naming it, before any
  launch. Device arrays are faked with `__cuda_array_interface__` metadata, which the wrapper reads
  without touching a device.
* Registry: the ladder is numbered, described, and its kernels are exported by the source.
* GPU: every fp32 variant x both backends x all four layouts x awkward shapes (1, 7, 127, 129,
  1000, 4097, tall, wide, K not a multiple of any tile, batched) against numpy_ref.matmul in
  float64, outputs poisoned with NaN first. fp32: |err| <= 1e-6 * sqrt(K) * max|ref|. The opt-in
  TF32 variant is held to the same fp32 bound against a reference computed from TF32-rounded
  inputs (that catches any indexing slip), and to its documented contract, 1e-3 * sqrt(K) *
  max|ref|, against the exact product.
The fp16 tensor-core variants are tested in tests/test_matmul_tc.py.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
from helpers import POISON, FakeDeviceArray, assert_close_fp32, errors
from tfm_kernels import _backend, _registry

# The module (the package attribute `tfm_kernels.matmul` is the function).
mm_mod = importlib.import_module("tfm_kernels.matmul")


# ---------------------------------------------------------------------------------------------
# Validation, no GPU
# ---------------------------------------------------------------------------------------------

F = FakeDeviceArray


def _raises(exc, match, *args, **kw):
    with pytest.raises(exc, match=match):
        tfm_kernels.matmul(*args, **kw)


@pytest.mark.parametrize("a, b, kw, exc, match", [
    # what the arguments are
    (np.ones((4, 4), np.float32), F((4, 4)), {}, TypeError, r"^a: expected a CUDA array.*host"),
    (F((4, 4)), [[1.0]], {}, TypeError, r"^b: expected a CUDA array"),
    (F((4, 4), "float64"), F((4, 4), "float64"), {}, TypeError, r"^a: expected dtype float32 or float16, got float64"),
    (F((4, 4), "int32"), F((4, 4)), {}, TypeError, r"^a: expected dtype"),
    (F((4, 4)), F((4, 4), "float16"), {}, TypeError, r"^b: expected a's dtype float32, got float16"),
    (F((4, 4)), F((4, 4)), {"trans_a": 1}, TypeError, r"^trans_a: expected a bool"),
    (F((4, 4)), F((4, 4)), {"trans_b": "yes"}, TypeError, r"^trans_b: expected a bool"),
    # shapes
    (F((4,)), F((4, 4)), {}, ValueError, r"^a: expected 2 or 3 dimensions"),
    (F((4, 4)), F((1, 1, 4, 4)), {}, ValueError, r"^b: expected 2 or 3 dimensions"),
    (F((2, 4, 4)), F((4, 4)), {}, ValueError, r"^b: expected the rank of a"),
    (F((2, 4, 4)), F((3, 4, 4)), {}, ValueError, r"^b: expected a's batch size 2"),
    (F((4, 5)), F((4, 3)), {}, ValueError, r"^b: inner dimensions differ: op\(a\) has K=5"),
    (F((4, 5)), F((5, 3)), {"trans_a": True}, ValueError, r"^b: inner dimensions differ: op\(a\) has K=4"),
    (F((4, 5)), F((5, 3)), {"trans_b": True}, ValueError, r"^b: inner dimensions differ.*op\(b\) has K=3"),
    (F((0, 5)), F((5, 3)), {}, ValueError, r"^a: every dimension must be >= 1"),
    (F((4, 5)), F((5, 0)), {}, ValueError, r"^b: every dimension must be >= 1"),
    # contiguity: a transposed view (strides swapped) is refused, not silently copied
    (F((4, 5), strides=(4, 16)), F((5, 3)), {}, ValueError, r"^a: must be C-contiguous"),
    # limits: int32 offsets inside one matrix, batch on grid z
    (F((65536, 32768)), F((32768, 2)), {}, ValueError, r"^a: 65536 x 32768 = .* overflows 32-bit"),
    (F((2, 46341 * 2)), F((46341 * 2, 46341)), {}, ValueError, r"^b: .* overflows 32-bit"),
    (F((65536, 1)), F((1, 65536)), {}, ValueError, r"^out: 65536 x 65536 = .* overflows 32-bit"),
    (F((65536, 2, 2)), F((65536, 2, 2)), {}, ValueError, r"^a: batch size 65536 exceeds 65535"),
    # one dimension within a tile of 2**31 (M = N = 1): the kernels' int32 loop bounds would wrap
    (F((1, 2**31 - 100)), F((2**31 - 100, 1)), {}, ValueError, r"^a: 1 x 2147483548 = .* overflows 32-bit"),
    (F((1, 1)), F((1, 2**31 - 10)), {}, ValueError, r"^b: 1 x 2147483638 = .* overflows 32-bit"),
    (F((2**31 - 10, 1)), F((1, 1)), {}, ValueError, r"^a: 2147483638 x 1 = .* overflows 32-bit"),
    # out
    (F((4, 5)), F((5, 3)), {"out": F((4, 4))}, ValueError, r"^out: expected shape \(4, 3\), got \(4, 4\)"),
    (F((2, 4, 5)), F((2, 5, 3)), {"out": F((4, 3))}, ValueError, r"^out: expected shape \(2, 4, 3\)"),
    (F((4, 5)), F((5, 3)), {"out": F((4, 3), "float16")}, TypeError, r"^out: expected dtype float32 for float32 inputs"),
    (F((4, 5), "float16"), F((5, 3), "float16"), {"out": F((4, 3), "float64")}, TypeError, r"^out: expected dtype"),
    (F((4, 5)), F((5, 3)), {"out": np.empty((4, 3), np.float32)}, TypeError, r"^out: expected a CUDA array"),
    (F((4, 5)), F((5, 3)), {"out": F((4, 3), strides=(4, 16))}, ValueError, r"^out: must be C-contiguous"),
    # backend / variant names
    (F((4, 5)), F((5, 3)), {"backend": "cuda"}, ValueError, r"^backend: expected 'ext', 'cupy' or None"),
    (F((4, 5)), F((5, 3)), {"variant": "no_such"}, ValueError, r"^variant: matmul has no variant 'no_such'"),
    (F((4, 5), "float16"), F((5, 3), "float16"), {"variant": "1_naive"}, TypeError,
     r"^variant: matmul/1_naive takes float32 inputs, not float16"),
])
def test_validation(a, b, kw, exc, match):
    _raises(exc, match, a, b, **kw)


def test_out_aliasing_refused():
    a = F((8, 8), ptr=1 << 40)
    b = F((8, 8))
    out = F((8, 8), ptr=(1 << 40) + 64)  # overlaps a's rows 2..7
    _raises(ValueError, r"^out: overlaps a in memory", a, b, out=out)


def test_valid_call_without_device_says_why():
    """A well-formed call on a machine with no usable GPU reaches the device check and stops there
    with RuntimeError (not a silent no-op, not a crash)."""
    if _backend.status()["device"][0]:
        pytest.skip("a CUDA device is usable here; this checks the GPU-less path")
    with pytest.raises(RuntimeError, match="no CUDA device is usable"):
        tfm_kernels.matmul(F((4, 5)), F((5, 3)))


def test_problem_dims_and_dtype_rules():
    """check_problem: M/N/K/batch for each layout, and the output dtype rules of the docstring."""
    meta = lambda shape, dt="float32": mm_mod._meta(F(shape, dt), "x", mm_mod.DTYPES, (2, 3))  # noqa: E731
    for ta in (False, True):
        for tb in (False, True):
            a = meta((7, 5) if ta else (5, 7))
            b = meta((11, 7) if tb else (7, 11))
            p = mm_mod.check_problem(a, b, None, ta, tb)
            assert (p.M, p.N, p.K, p.batch, p.out_shape) == (5, 11, 7, 1, (5, 11))
    p = mm_mod.check_problem(meta((2, 5, 7)), meta((2, 7, 3)), None, False, False)
    assert (p.batch, p.out_shape, p.out_dtype) == (2, (2, 5, 3), "float32")
    h = lambda s: meta(s, "float16")  # noqa: E731
    assert mm_mod.check_problem(h((5, 7)), h((7, 3)), None, False, False).out_dtype == "float16"
    assert mm_mod.check_problem(h((5, 7)), h((7, 3)), meta((5, 3)), False, False).out_dtype == "float32"


# ---------------------------------------------------------------------------------------------
# Registry, no GPU
# ---------------------------------------------------------------------------------------------

FP32 = [v for v in tfm_kernels.variants("matmul") if "float32" in v.dtypes]


def test_ladder_registered():
    nums = [v.number for v in FP32]
    assert nums == sorted(nums) and nums[:5] == [1, 2, 3, 4, 5], nums
    for v in FP32:
        assert v.description and v.kernels, v.qualname
        exported = set(_backend.exports("matmul.cu"))
        for source, name in v.kernels:
            assert source == "matmul.cu" and name in exported, f"{v.qualname}: {name} not exported"
        # every layout has its own instantiation
        assert len(v.kernels) == 4, v.qualname


def test_default_is_best_plain_fp32():
    """The default for float32 is the highest plain-fp32 variant; the TF32 one is opt-in only."""
    v = _registry.choose("matmul", None, dtype="float32", M=4096, N=4096, K=4096, batch=1,
                         trans_a=False, trans_b=False, out_dtype="float32", align=256)
    plain = [x for x in FP32 if not x.extra.get("opt_in")]
    assert v is plain[-1]
    for x in FP32:
        if x.extra.get("opt_in"):
            assert "tf32" in x.name


# ---------------------------------------------------------------------------------------------
# GPU: every variant, both backends, all four layouts
# ---------------------------------------------------------------------------------------------

# (M, N, K): smaller than any tile; K below BK; 127/129 around the tiles; tall and wide; K = 1001
# (odd: no vector path on a K-contiguous operand) and 4097 (long reduction); multiples of every
# tile (the unguarded fast path); N, M multiples of 4 with ragged tiles (vector loads + guards).
SHAPES = [
    (1, 1, 1), (7, 5, 3), (1, 129, 127), (129, 1, 7), (127, 129, 129), (129, 127, 17),
    (1000, 17, 97), (17, 1000, 63), (260, 132, 1001), (64, 96, 4097), (4097, 3, 33),
    (5, 4097, 33), (256, 256, 256), (384, 128, 64),
]
LAYOUTS = [(False, False), (False, True), (True, False), (True, True)]
LAYOUT_IDS = ["NN", "NT", "TN", "TT"]


class RecordingBackend:
    """Stands in for a backend: records the Launch a variant builds instead of issuing it."""

    name = "recording"
    cc = 90

    def __init__(self):
        self.launches = []

    def launch(self, launch):
        self.launches.append(launch)


@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", FP32, ids=lambda v: v.key)
def test_launch_plans(variant, ta, tb):
    """Each fp32 variant's launch, built on host stand-ins: the layout's exported kernel, a grid
    whose tiles cover M x N and whose z is the batch, the block the template was instantiated for
    (threads = tile area / outputs per thread), exact int32/int64 argument types, and the dynamic
    shared memory the kernel's ring needs."""
    import re

    M, N, K, batch = 300, 200, 50, 3
    a = np.empty((batch,) + ((K, M) if ta else (M, K)), np.float32)
    b = np.empty((batch,) + ((N, K) if tb else (K, N)), np.float32)
    out = np.empty((batch, M, N), np.float32)
    be = RecordingBackend()
    variant.fn(be, a, b, ta, tb, out)
    (ln,) = be.launches
    assert (ln.source, ln.kernel) in variant.kernels
    assert ln.kernel in _backend.exports("matmul.cu")
    assert ln.kernel.endswith(f"{'true' if ta else 'false'}, {'true' if tb else 'false'}>")
    plan = dict((n, p) for n, _, p, _, _ in mm_mod.LADDER + [mm_mod.TF32])[variant.number]
    gx, gy, gz = ln.grid
    tiles = (gy * plan.bm, gx * plan.bn) if plan.n_major else (gx * plan.bm, gy * plan.bn)
    assert tiles[0] >= M > tiles[0] - plan.bm and tiles[1] >= N > tiles[1] - plan.bn and gz == batch
    p = [int(x) for x in re.findall(r"\d+", ln.kernel.split("<", 1)[1])]  # template arguments
    threads = ln.block[0] * ln.block[1] * ln.block[2]
    expect_threads = {1: 1024, 2: 1024, 3: 1024, 4: p[0] * p[1] // p[3] if len(p) > 3 else None,
                      5: p[0] * p[1] // (p[3] * p[4]) if len(p) > 4 else None,
                      6: p[0] * p[1] // (p[3] * p[4]) if len(p) > 4 else None}
    if variant.number in (7, 8):
        expect_threads[variant.number] = p[8]
        assert p[8] == (p[0] // p[3]) * (p[1] // p[4]) * 32  # one warp per warp tile
    if variant.number == 9:
        expect_threads[9] = p[3] * p[4] * 32
    assert threads == expect_threads[variant.number], (threads, ln.kernel)
    if variant.number == 8:  # STAGES x (As[BK][BM+4] + Bs[BK][BN+4]) floats
        assert ln.smem == p[9] * p[2] * ((p[0] + 4) + (p[1] + 4)) * 4
    elif variant.number == 9:  # STAGES x (As[BM][BK+4] + Bs[BN][BK+4]) floats
        assert ln.smem == p[5] * (p[0] + p[1]) * (p[2] + 4) * 4
    else:
        assert ln.smem == 0
    assert ln.smem <= 227 * 1024
    assert [type(x) for x in ln.args[3:]] == [np.int32] * 3 + [np.int64] * 3
    assert [int(x) for x in ln.args[3:]] == [M, N, K, M * K, K * N, M * N]
    assert ln.args[0] is a and ln.args[1] is b and ln.args[2] is out



def _operands(rng, M, N, K, ta, tb, batch=None):
    lead = () if batch is None else (batch,)
    a = rng.standard_normal(lead + ((K, M) if ta else (M, K))).astype(np.float32)
    b = rng.standard_normal(lead + ((N, K) if tb else (K, N))).astype(np.float32)
    return a, b


def round_tf32(x: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 in NumPy: keep 10 mantissa bits, round half away from zero (adding half an
    ulp of the kept bits to the sign-magnitude pattern, then truncating)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def _run(backend, variant, a, b, ta, tb):
    import cupy as cp

    da, db = cp.asarray(a), cp.asarray(b)
    M = a.shape[-1] if ta else a.shape[-2]
    N = b.shape[-2] if tb else b.shape[-1]
    out = cp.full(a.shape[:-2] + (M, N), POISON, dtype=cp.float32)
    got = tfm_kernels.matmul(da, db, ta, tb, backend=backend, variant=variant, out=out)
    assert got is out
    return cp.asnumpy(out)


def _check(out, a, b, ta, tb, variant: _registry.Variant, what: str):
    K = a.shape[-2] if ta else a.shape[-1]
    ref = numpy_ref.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb)
    if variant.extra.get("opt_in"):  # TF32
        ref_t = numpy_ref.matmul(round_tf32(a).astype(np.float64), round_tf32(b).astype(np.float64), ta, tb)
        assert_close_fp32(out, ref_t, reduction=K, what=f"{what} vs TF32-rounded inputs")
        assert_close_fp32(out, ref, reduction=K, rtol=variant.extra["rtol"], what=f"{what} vs exact")
    else:
        assert_close_fp32(out, ref, reduction=K, what=what)


@pytest.mark.gpu
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", FP32, ids=lambda v: v.key)
def test_variant(backend, variant, ta, tb, rng):
    for M, N, K in SHAPES:
        a, b = _operands(rng, M, N, K, ta, tb)
        out = _run(backend, variant.key, a, b, ta, tb)
        _check(out, a, b, ta, tb, variant, f"{variant.qualname} {backend} M={M} N={N} K={K} ta={ta} tb={tb}")


@pytest.mark.gpu
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", FP32, ids=lambda v: v.key)
def test_variant_batched(backend, variant, ta, tb, rng):
    """blockIdx.z over the batch: each matrix with its own data, edges in every dimension."""
    a, b = _operands(rng, 133, 67, 45, ta, tb, batch=3)
    out = _run(backend, variant.key, a, b, ta, tb)
    _check(out, a, b, ta, tb, variant, f"{variant.qualname} {backend} batched ta={ta} tb={tb}")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", [v for v in FP32 if v.number >= 6], ids=lambda v: v.key)
def test_misaligned_views(backend, variant, rng):
    """Views that start 4 bytes into an allocation: the vector (16-byte) paths must fall back to
    their guarded scalar loads, whatever the row lengths say."""
    import cupy as cp

    M, N, K = 68, 72, 36  # every row a multiple of 4 floats: only the base address is misaligned
    for ta, tb in LAYOUTS:
        a, b = _operands(rng, M, N, K, ta, tb)
        da = cp.empty(a.size + 1, cp.float32)[1:].reshape(a.shape)
        db = cp.empty(b.size + 1, cp.float32)[1:].reshape(b.shape)
        da[...] = cp.asarray(a)
        db[...] = cp.asarray(b)
        out = cp.full(M * N + 1, POISON, cp.float32)[1:].reshape(M, N)
        tfm_kernels.matmul(da, db, ta, tb, backend=backend, variant=variant.key, out=out)
        _check(cp.asnumpy(out), a, b, ta, tb, variant, f"{variant.qualname} {backend} misaligned ta={ta} tb={tb}")


@pytest.mark.gpu
def test_default_variant_and_allocation(backend, rng):
    """No variant, no out: the default plain-fp32 variant, a fresh float32 (M, N) result."""
    import cupy as cp

    a, b = _operands(rng, 300, 200, 100, False, True)
    got = tfm_kernels.matmul(cp.asarray(a), cp.asarray(b), trans_b=True, backend=backend)
    assert got.dtype == cp.float32 and got.shape == (300, 200)
    ref = numpy_ref.matmul(a.astype(np.float64), b.astype(np.float64), False, True)
    assert_close_fp32(got, ref, reduction=100)


@pytest.mark.gpu
def test_float16_output_dtype_rules(backend, rng):
    """float16 inputs: float16 out by default, float32 when the caller passes a float32 out (the
    fp32 accumulators unrounded, so strictly closer to the exact product)."""
    import cupy as cp

    # The rules belong to the API, not to a variant: take the first plain fp16 variant (the default
    # one is tested in tests/test_matmul_tc.py).
    fp16 = [v for v in tfm_kernels.variants("matmul") if "float16" in v.dtypes and not v.broken
            and v.arch <= _backend.get(backend).cc]
    if not fp16:
        pytest.skip("no float16 matmul variant registered for this device")
    variant = fp16[0].key
    a = rng.standard_normal((96, 80)).astype(np.float16)
    b = rng.standard_normal((80, 72)).astype(np.float16)
    ref = numpy_ref.matmul(a.astype(np.float64), b.astype(np.float64))
    half = tfm_kernels.matmul(cp.asarray(a), cp.asarray(b), backend=backend, variant=variant)
    assert half.dtype == cp.float16 and half.shape == (96, 72)
    out = cp.full((96, 72), POISON, cp.float32)
    full = tfm_kernels.matmul(cp.asarray(a), cp.asarray(b), backend=backend, variant=variant, out=out)
    assert full is out
    # fp32 output: only fp32 accumulation error on exact fp16 products; fp16 output adds a rounding
    e_full, _, scale = errors(full, ref)
    e_half, _, _ = errors(half, ref)
    assert e_full <= 1e-6 * np.sqrt(80) * scale, (e_full, scale)
    assert e_half <= 2.0 ** -11 * scale * 1.01 + e_full, (e_half, scale)


# ---------------------------------------------------------------------------------------------
# NumPy emulation of the index maps of variants 6-9, no GPU
# ---------------------------------------------------------------------------------------------
# The formulas below are transcribed from csrc/matmul.cu (same names). Each check runs the map for
# every thread of every block at awkward sizes and proves: every output element is written exactly
# once; every shared-memory slot of a stage receives exactly the op(A)/op(B) element the compute
# expects there (or a zero past the edge); every global read is in bounds; the cp.async ring never
# computes on a stage before its copies are waited for, nor refills one still being read.

AWKWARD = [(131, 77, 45), (132, 76, 44), (1, 1, 1), (129, 257, 17), (7, 130, 37)]


def _cdiv(a, b):
    return -(-a // b)


def _a_index(ta, m, k, M, K):
    return k * M + m if ta else m * K + k


def _b_index(tb, k, n, K, N):
    return n * K + k if tb else k * N + n


def emulate_tile_load_vec4(TR, TC, NT, STORE_T, LDS, row0, col0, rows, cols, vec):
    """tile_load_vec4 (and load4_guarded): [(smem slot, global index or None)] for one tile."""
    C4 = TC // 4
    out = []
    for tid in range(NT):
        for j in range(TR * C4 // NT):
            idx = tid + j * NT
            r, c = idx // C4, (idx % C4) * 4
            gr, gc = row0 + r, col0 + c
            for q in range(4):
                ok = gr < rows and gc + q < cols  # the vector branch needs gc + 3 < cols, same elements
                if vec and gr < rows and gc + 3 < cols:
                    assert (gr * cols + gc) % 4 == 0, "16-byte load from an unaligned address"
                dst = (c + q) * LDS + r if STORE_T else r * LDS + c + q
                out.append((dst, gr * cols + gc + q if ok else None))
    return out


def emulate_tile_load_scalar(TR, TC, NT, STORE_T, LDS, row0, col0, rows, cols):
    """tile_load_scalar (variants 3-5): [(smem slot, global index or None)] for one tile."""
    out = []
    for tid in range(NT):
        for j in range(TR * TC // NT):
            idx = tid + j * NT
            r, c = idx // TC, idx % TC
            gr, gc = row0 + r, col0 + c
            ok = gr < rows and gc < cols
            out.append((c * LDS + r if STORE_T else r * LDS + c, gr * cols + gc if ok else None))
    return out


def emulate_tile_cp_async(TR, TC, NT, STORE_T, LDS, row0, col0, rows, cols, vec):
    """tile_cp_async: [(smem slot, global index or None)] for one tile, both of its paths."""
    out = []
    if not STORE_T and vec:
        C4 = TC // 4
        for tid in range(NT):
            for j in range(TR * C4 // NT):
                idx = tid + j * NT
                r, c = idx // C4, (idx % C4) * 4
                gr, gc = row0 + r, col0 + c
                ok = gr < rows and gc < cols
                if ok:
                    assert gc + 3 < cols and (gr * cols + gc) % 4 == 0, "16-byte chunk straddles the edge"
                for q in range(4):
                    out.append((r * LDS + c + q, gr * cols + gc + q if ok else None))
    else:
        assert NT % TC == 0 and TR % (NT // TC) == 0
        RSTEP = NT // TC
        DSTEP = RSTEP if STORE_T else RSTEP * LDS  # in floats
        for tid in range(NT):
            r0, c = tid // TC, tid % TC
            gc = col0 + c
            src = (row0 + r0) * cols + gc
            dst = c * LDS + r0 if STORE_T else r0 * LDS + c
            for j in range(TR // RSTEP):
                ok = gc < cols and row0 + r0 + j * RSTEP < rows
                out.append((dst + j * DSTEP, src + j * RSTEP * cols if ok else None))
    return out


def _check_stage(copies, expect, size, where):
    """Every slot in `expect` written exactly once with the expected source; sources in bounds."""
    seen = {}
    for dst, src in copies:
        assert dst not in seen, f"{where}: smem slot {dst} written twice"
        assert 0 <= dst < size, f"{where}: smem slot {dst} outside the stage ({size} floats)"
        if src is not None:
            assert 0 <= src < expect["numel"], f"{where}: global read {src} out of bounds"
        seen[dst] = src
    for dst, src in expect["slots"].items():
        assert dst in seen, f"{where}: smem slot {dst} never written"
        assert seen[dst] == src, f"{where}: slot {dst} holds {seen[dst]}, expected {src}"


def _expect(index, r0, c0, R, C, BR, BC, slot):
    """The BR x BC tile at (r0, c0) of a logical R x C operand: slot(r, c) -> the element
    index(r0 + r, c0 + c) the compute reads there (None: outside the operand, must be zero)."""
    slots = {}
    for r in range(BR):
        for c in range(BC):
            ok = r0 + r < R and c0 + c < C
            slots[slot(r, c)] = index(r0 + r, c0 + c) if ok else None
    return {"slots": slots, "numel": R * C}


def _expect_a(ta, m0, k0, M, K, BM, BK, slot):
    """op(A)'s tile, slot(m, k)."""
    return _expect(lambda m, k: _a_index(ta, m, k, M, K), m0, k0, M, K, BM, BK, slot)


def _expect_b(tb, k0, n0, K, N, BK, BN, slot):
    """op(B)'s tile, slot(k, n)."""
    return _expect(lambda k, n: _b_index(tb, k, n, K, N), k0, n0, K, N, BK, BN, slot)


def _emulate_a(load, ta, km_order, BM, BK, NT, LDS, m0, k0, M, K, *vec):
    """load_a_scalar / load_a_km_vec4 / load_a_cp_async: the op(A) tile through `load` (one of the
    emulate_tile_* above) into As[k][m] (km_order) or As[m][k]."""
    if ta:  # memory (k, m)
        return load(BK, BM, NT, not km_order, LDS, k0, m0, K, M, *vec)
    return load(BM, BK, NT, km_order, LDS, m0, k0, M, K, *vec)


def _emulate_b(load, tb, nk_order, BK, BN, NT, LDS, k0, n0, K, N, *vec):
    """load_b_scalar / load_b_kn_vec4 / load_b_cp_async: the op(B) tile into Bs[n][k] (nk_order)
    or Bs[k][n]."""
    if tb:  # memory (n, k)
        return load(BN, BK, NT, not nk_order, LDS, n0, k0, N, K, *vec)
    return load(BK, BN, NT, nk_order, LDS, k0, n0, K, N, *vec)


# (BM, BN, BK, threads, LDA, LDB) of variants 3, 4, 5: As[m][k], Bs[k][n]
SCALAR_TILES = {"smem_32": (32, 32, 32, 1024, 33, 33), "blocktile_1d": (64, 64, 8, 512, 9, 68),
                "blocktile_2d": (128, 128, 8, 256, 9, 132)}


@pytest.mark.parametrize("M, N, K", AWKWARD)
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("kind", list(SCALAR_TILES))
def test_emulate_scalar_tile_loads(kind, ta, tb, M, N, K):
    """load_a_scalar / load_b_scalar of variants 3-5 (As[m][k], Bs[k][n]) at every tile origin."""
    BM, BN, BK, NT, LDA, LDB = SCALAR_TILES[kind]
    for m0 in range(0, M, BM):
        for n0 in range(0, N, BN):
            for k0 in range(0, K, BK):
                where = f"{kind} M={M} N={N} K={K} ta={ta} tb={tb} m0={m0} n0={n0} k0={k0}"
                a = _emulate_a(emulate_tile_load_scalar, ta, False, BM, BK, NT, LDA, m0, k0, M, K)
                b = _emulate_b(emulate_tile_load_scalar, tb, False, BK, BN, NT, LDB, k0, n0, K, N)
                _check_stage(a, _expect_a(ta, m0, k0, M, K, BM, BK, lambda m, k: m * LDA + k), BM * LDA, where + " A")
                _check_stage(b, _expect_b(tb, k0, n0, K, N, BK, BN, lambda k, n: k * LDB + n), BK * LDB, where + " B")


def _tparams(number: int) -> list[int]:
    """The integer template arguments of a registered variant's kernel (layout flags dropped)."""
    import re

    plan = dict((n, p) for n, _, p, _, _ in mm_mod.LADDER + [mm_mod.TF32])[number]
    return [int(x) for x in re.findall(r"\d+", plan.kernel.split("<", 1)[1])]


@pytest.mark.parametrize("M, N, K", AWKWARD)
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("kind", ["vec4_6", "vec4_7", "cp_async_km", "cp_async_tf32"])
def test_emulate_tile_loads(kind, ta, tb, M, N, K):
    """The smem tiles of variants 6 and 7 (16-byte loads through registers), 8 (cp.async into
    As[k][m], Bs[k][n]) and 9 (cp.async into As[m][k], Bs[n][k]), with the tile sizes of their
    registered kernels, at every tile origin, the vector paths on and (where the alignment rule
    turns them off) off."""
    if kind == "vec4_6":  # <BM, BN, BK, TM, TN>
        BM, BN, BK, TM, TN = _tparams(6)
        NT = BM * BN // (TM * TN)
    elif kind in ("vec4_7", "cp_async_km"):  # <BM, BN, BK, WM, WN, WNITER, TM, TN, NT[, STAGES]>
        BM, BN, BK, *_, NT = _tparams(7 if kind == "vec4_7" else 8)[:9]
    else:  # <BM, BN, BK, WARPS_M, WARPS_N, STAGES>
        BM, BN, BK, wm, wn, _ = _tparams(9)
        NT = wm * wn * 32
    if kind == "cp_async_tf32":  # As[m][k], Bs[n][k], rows of BK + 4
        load, km_order, nk_order, LDA, LDB = emulate_tile_cp_async, False, True, BK + 4, BK + 4
        slot_a, slot_b = (lambda m, k: m * LDA + k), (lambda k, n: n * LDB + k)
        size_a, size_b = BM * LDA, BN * LDB
    else:  # As[k][m], Bs[k][n], rows of BM + 4 / BN + 4
        load = emulate_tile_cp_async if kind == "cp_async_km" else emulate_tile_load_vec4
        km_order, nk_order, LDA, LDB = True, False, BM + 4, BN + 4
        slot_a, slot_b = (lambda m, k: k * LDA + m), (lambda k, n: k * LDB + n)
        size_a, size_b = BK * LDA, BK * LDB
    for vec_ok in (True, False):
        vecA = vec_ok and (M if ta else K) % 4 == 0
        vecB = vec_ok and (K if tb else N) % 4 == 0
        for m0 in range(0, M, BM):
            for n0 in range(0, N, BN):
                for k0 in range(0, K, BK):
                    where = f"{kind} M={M} N={N} K={K} ta={ta} tb={tb} m0={m0} n0={n0} k0={k0} vec={vec_ok}"
                    a = _emulate_a(load, ta, km_order, BM, BK, NT, LDA, m0, k0, M, K, vecA)
                    b = _emulate_b(load, tb, nk_order, BK, BN, NT, LDB, k0, n0, K, N, vecB)
                    _check_stage(a, _expect_a(ta, m0, k0, M, K, BM, BK, slot_a), size_a, where + " A")
                    _check_stage(b, _expect_b(tb, k0, n0, K, N, BK, BN, slot_b), size_b, where + " B")


def emulate_warptile_outputs(M, N, BM, BN, BK, WM, WN, WNITER, TM, TN, NT):
    """WarpTile (variants 7, 8): C write counts over the whole grid, and the smem reads' range."""
    WMITER = (WM * WN) // (32 * TM * TN * WNITER)
    WSUBM, WSUBN = WM // WMITER, WN // WNITER
    LDA = BM + 4
    count = np.zeros((M, N), np.int64)
    for by in range(_cdiv(M, BM)):
        for bx in range(_cdiv(N, BN)):
            m0, n0 = by * BM, bx * BN
            for tid in range(NT):
                warp, lane = tid // 32, tid % 32
                row = (warp // (BN // WN)) * WM + (lane // (WSUBN // TN)) * TM
                col = (warp % (BN // WN)) * WN + (lane % (WSUBN // TN)) * TN
                for wm in range(WMITER):
                    for i in range(TM):
                        a_slot = row + wm * WSUBM + i  # As[k][a_slot]: a real column, not padding
                        assert a_slot < BM and (BK - 1) * LDA + a_slot < BK * LDA
                        for wn in range(WNITER):
                            for j in range(0, TN, 4):
                                m = m0 + row + wm * WSUBM + i
                                n = n0 + col + wn * WSUBN + j
                                assert col + wn * WSUBN + j + 3 < BN
                                if m < M:
                                    for q in range(4):
                                        if n + q < N:
                                            count[m, n + q] += 1
    return count


@pytest.mark.parametrize("number", [7, 8])
@pytest.mark.parametrize("M, N, K", AWKWARD)
def test_emulate_warptile_writes_each_output_once(M, N, K, number):
    count = emulate_warptile_outputs(M, N, *_tparams(number)[:9])
    assert count.min() == 1 and count.max() == 1, (count.min(), count.max())


def emulate_vectorized_outputs(M, N, BM=128, BN=128, TM=8, TN=8):
    """Variant 6's 8x8 map (and, with float4 stores off, variant 5's)."""
    NT = BM * BN // (TM * TN)
    count = np.zeros((M, N), np.int64)
    for by in range(_cdiv(M, BM)):
        for bx in range(_cdiv(N, BN)):
            for tid in range(NT):
                tcol, trow = tid % (BN // TN), tid // (BN // TN)
                for i in range(TM):
                    m = by * BM + trow * TM + i
                    for j in range(TN):
                        n = bx * BN + tcol * TN + j
                        if m < M and n < N:
                            count[m, n] += 1
    return count


@pytest.mark.parametrize("M, N, K", AWKWARD)
def test_emulate_vectorized_writes_each_output_once(M, N, K):
    count = emulate_vectorized_outputs(M, N)
    assert count.min() == 1 and count.max() == 1


@pytest.mark.parametrize("M, N, K", AWKWARD)
def test_emulate_blocktile_1d_writes_each_output_once(M, N, K):
    """Variant 4: thread t owns column t % 64 and rows (t / 64) * 8 .. + 7 of a 64x64 tile."""
    BM = BN = 64
    TM, NT = 8, 512
    count = np.zeros((M, N), np.int64)
    for by in range(_cdiv(M, BM)):
        for bx in range(_cdiv(N, BN)):
            for tid in range(NT):
                tcol, trow = tid % BN, tid // BN
                n = bx * BN + tcol
                for i in range(TM):
                    m = by * BM + trow * TM + i
                    if m < M and n < N:
                        count[m, n] += 1
    assert count.min() == 1 and count.max() == 1


def emulate_tf32_block(As, Bs, BM=128, BN=128, BK=16, WARPS_M=2, WARPS_N=4):
    """matmul_tf32's fragment loads and mma.m16n8k8 for one stage of one block, lane by lane, using
    the PTX ISA fragment layouts; returns the block's C tile assembled from the lanes' c0..c3 via
    the epilogue's (row, col) map, and the per-element write counts."""
    LD = BK + 4
    WTM, WTN = BM // WARPS_M, BN // WARPS_N
    MT, NTL = WTM // 16, WTN // 8
    Cblk = np.zeros((BM, BN))
    count = np.zeros((BM, BN), np.int64)
    as_flat, bs_flat = As.reshape(-1), Bs.reshape(-1)
    for warp in range(WARPS_M * WARPS_N):
        wm0, wn0 = (warp // WARPS_N) * WTM, (warp % WARPS_N) * WTN
        acc = np.zeros((32, MT, NTL, 4))
        for kk in range(0, BK, 8):
            af = np.zeros((32, MT, 4))
            bf = np.zeros((32, NTL, 2))
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for i in range(MT):
                    p = (wm0 + i * 16 + g) * LD + kk + t
                    af[lane, i] = [as_flat[p], as_flat[p + 8 * LD], as_flat[p + 4], as_flat[p + 8 * LD + 4]]
                for j in range(NTL):
                    p = (wn0 + j * 8 + g) * LD + kk + t
                    bf[lane, j] = [bs_flat[p], bs_flat[p + 4]]
            for i in range(MT):
                for j in range(NTL):
                    # The hardware's view: rebuild A (16x8), B (8x8) from the lanes (PTX ISA layouts),
                    # multiply, hand C (16x8) back out in the C layout.
                    Af, Bf = np.zeros((16, 8)), np.zeros((8, 8))
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        Af[g, t], Af[g + 8, t], Af[g, t + 4], Af[g + 8, t + 4] = af[lane, i]
                        Bf[t, g], Bf[t + 4, g] = bf[lane, j]
                    Cf = Af @ Bf
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        acc[lane, i, j] += [Cf[g, 2 * t], Cf[g, 2 * t + 1], Cf[g + 8, 2 * t], Cf[g + 8, 2 * t + 1]]
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for i in range(MT):
                for j in range(NTL):
                    m, n = wm0 + i * 16 + g, wn0 + j * 8 + 2 * t
                    for h in range(2):
                        for q in range(2):
                            Cblk[m + 8 * h, n + q] = acc[lane, i, j, 2 * h + q]
                            count[m + 8 * h, n + q] += 1
    return Cblk, count


def test_emulate_tf32_fragments():
    """Variant 9's fragment addressing reproduces As @ Bs^T for the whole block tile, each output
    written by exactly one lane."""
    rng = np.random.default_rng(9)
    BM, BN, BK = 128, 128, 16
    LD = BK + 4
    As = rng.standard_normal((BM, LD))  # As[m][k]; the 4 padding columns must never be read:
    Bs = rng.standard_normal((BN, LD))
    As[:, BK:] = np.nan
    Bs[:, BK:] = np.nan
    C, count = emulate_tf32_block(As, Bs)
    assert count.min() == 1 and count.max() == 1
    np.testing.assert_allclose(C, As[:, :BK] @ Bs[:, :BK].T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stages", [2, 3, 4])
@pytest.mark.parametrize("ktiles", [1, 2, 3, 4, 7])
def test_emulate_cp_async_ring(stages, ktiles):
    """The ring of variants 8 and 9, step by step: each compute finds its own tile in the stage,
    every one of that tile's copies waited for, and no refill hits a stage before everyone has
    finished reading it (the refill is issued after the barrier that follows the previous read)."""
    stage_tile = [None] * stages  # which tile's copies target each stage
    groups = []                   # committed groups, in order: the tile each carries (or None)
    for s in range(stages - 1):
        if s < ktiles:
            stage_tile[s] = s
        groups.append(s if s < ktiles else None)
    last_read = [None] * stages   # the iteration that last computed on each stage
    for kt in range(ktiles):
        # cp_async_wait<stages-2>: all but the newest stages-2 groups are complete
        complete = set(g for g in groups[:max(0, len(groups) - (stages - 2))] if g is not None)
        assert kt in complete, f"tile {kt} computed before its copies were waited for"
        # __syncthreads, then refill
        nxt = kt + stages - 1
        if nxt < ktiles:
            st = nxt % stages
            assert last_read[st] is None or last_read[st] < kt, "refill of a stage still being read"
            stage_tile[st] = nxt
        groups.append(nxt if nxt < ktiles else None)
        st = kt % stages
        assert stage_tile[st] == kt, f"stage {st} holds tile {stage_tile[st]}, not {kt}"
        last_read[st] = kt
