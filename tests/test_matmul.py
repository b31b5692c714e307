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
The fp16 tensor-core variants are tested in tests/test_matmul_tc.py; without a GPU, every variant's
kernels run on the CPU in tests/test_matmul_emulation.py (the host emulation of csrc/).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
import helpers
from helpers import POISON, FakeDeviceArray, assert_close_fp32, errors
from tfm_kernels import _backend, _registry, _sass

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
        # every layout has its own instantiation (15 adds the kernel that sums its splits)
        layouts = [n for _, n in v.kernels if n.endswith(("true>", "false>"))]
        assert len(layouts) == 4 and len(v.kernels) == 4 + (v.number == 15), v.qualname


def test_default_is_best_plain_fp32():
    """The default for float32 is the highest plain-fp32 variant that has run on a GPU; the TF32
    one (its precision contract) is opt-in only."""
    v = _registry.choose("matmul", None, dtype="float32", M=4096, N=4096, K=4096, batch=1,
                         trans_a=False, trans_b=False, out_dtype="float32", align=256)
    plain = [x for x in FP32 if not (x.extra.get("opt_in") or x.extra.get("unverified") or x.broken)]
    assert v is plain[-1]
    assert {x.name for x in FP32 if x.extra.get("opt_in")} == {"tf32_mma"}


def _k_loops(sass: str) -> list[tuple[int, int, list[str]]]:
    """The loops of one SASS image that hold a whole k-tile of FFMAs (2048 per warp at 8's tile)."""
    return [lp for lp in _sass.loops(sass) if sum(_sass.opcode(t).startswith("FFMA") for t in lp[2]) == 2048]


@pytest.mark.parametrize("ta, tb", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["NN", "NT", "TN", "TT"])
def test_iterators_ffma_share(ta, tb):
    """What variant 14 was written for, read off the built extension's machine code (no GPU): its
    steady-state k-loop (the shorter of its two k-loops) issues at least 89% FFMA, where 8's k-loop
    issues 84% or less counted the same way (statically; 81.4% NN once its nested copy loops' second
    trips are added, docs/matmul.md). Its copies are 16-byte ones only, none of them 4-byte."""
    sass = helpers.ext_sass()
    layout = f"Lb{int(ta)}ELb{int(tb)}EEvPKfS1_Pfiiixxx"  # 14 takes one more int (the split count)
    mine = [s for n, s in sass.items() if n.startswith("_Z11matmul_iterI") and layout in n]
    ref8 = [s for n, s in sass.items() if n.startswith("_Z15matmul_cp_asyncI") and layout in n]
    assert len(mine) == 1 and len(ref8) == 1, (len(mine), len(ref8))
    for image, image8 in zip(_sass.images(mine[0]), _sass.images(ref8[0])):
        loops = _k_loops(image)
        assert len(loops) == 2, [len(b) for _, _, b in loops]  # the steady state and the tail
        steady = min(loops, key=lambda lp: len(lp[2]))[2]
        ops = [t.split()[t.startswith("@")] for t in steady]  # full opcodes: LDGSTS.E.BYPASS.128
        share = sum(o.startswith("FFMA") for o in ops) / len(ops)
        share8 = max(sum(_sass.opcode(t).startswith("FFMA") for t in b) / len(b) for _, _, b in _k_loops(image8))
        assert share >= 0.89 and share > share8 + 0.04, (share, share8)
        # The compute is 8's (96 LDS.128 per k-tile); each k-contiguous operand adds 4 LDS.128 and 4
        # STS.128 (its staged chunks read back, transposed, stored); every copy is a 16-byte one.
        k_contig = (not ta) + bool(tb)
        assert sum(o == "LDS.128" for o in ops) == 96 + 4 * k_contig, ops
        assert sum(o == "STS.128" for o in ops) == 4 * k_contig, ops
        assert sum(o == "LDGSTS.E.BYPASS.128" for o in ops) == 8, ops
        assert not any(o.startswith("LDGSTS") and ".128" not in o for o in ops), "a 4-byte cp.async"


def test_split_k_counts():
    """Variant 15's split of K: enough CTAs for one wave of 2 per SM, each split at least
    SPLIT_MIN_KTILES k-tiles long and none empty, at most SPLIT_MAX, and the grid's z limit kept."""
    S = mm_mod.iter_splits
    assert S(1024, 1024, 1024, 1, 132) == 4      # 64 tiles -> 256 CTAs of 16 k-tiles each
    assert S(512, 2048, 8192, 1, 132) == 4       # a d_model 512 layer's dW
    assert S(4096, 4096, 4096, 1, 132) == 1      # 1024 tiles already fill the GPU
    assert S(1, 1, 1, 1, 132) == 1 and S(128, 128, 48, 1, 132) == 1  # too short to split
    assert S(64, 64, 4096, 40000, 132) == 1      # batch * splits must fit grid z
    for M, N, K, batch, sms in [(68, 72, 4100, 1, 132), (68, 36, 260, 1, 8), (132, 68, 132, 2, 132),
                                (1000, 17, 97, 3, 16), (5, 4097, 33, 1, 132), (64, 96, 4097, 2, 132)]:
        s = S(M, N, K, batch, sms)
        ktiles = -(-K // 16)
        per = -(-ktiles // s)
        assert 1 <= s <= mm_mod.SPLIT_MAX and batch * s <= mm_mod.GRID_YZ_MAX
        assert (s - 1) * per < ktiles, "the last split must own at least one k-tile"
        assert s == 1 or per >= mm_mod.SPLIT_MIN_KTILES


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
    # every stored row a multiple of 4 floats in every layout (what 14-15 take), with ragged tiles:
    # K = 4 and 20 (one partial k-tile; one full and one partial), M/N past a tile edge by 4;
    # K = 4100 on one tile: 15 splits it 16 ways. (65, 37, 1028): 14-15 take it in NT only, where
    # 15's 13 splits leave an odd M N to its reduction's scalar path.
    (4, 4, 4), (132, 260, 36), (1028, 8, 20), (68, 72, 4100), (65, 37, 1028),
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
def test_launch_plans(variant, ta, tb, monkeypatch):
    """Each fp32 variant's launch, built on host stand-ins: the layout's exported kernel, a grid
    whose tiles cover M x N and whose z is the batch, the block the template was instantiated for
    (threads = tile area / outputs per thread), exact int32/int64 argument types, and the dynamic
    shared memory the kernel's ring needs."""
    import re

    M, N, K, batch = 300, 200, 52, 3  # 14-15 need every stored row a multiple of 4 floats
    monkeypatch.setattr(tfm_kernels.matmul_tc, "_sm_count", lambda device_id: 132)  # 15 asks
    a = np.empty((batch,) + ((K, M) if ta else (M, K)), np.float32)
    b = np.empty((batch,) + ((N, K) if tb else (K, N)), np.float32)
    out = np.empty((batch, M, N), np.float32)
    be = RecordingBackend()
    variant.fn(be, a, b, ta, tb, out)
    (ln,) = be.launches
    assert (ln.source, ln.kernel) in variant.kernels
    assert ln.kernel in _backend.exports("matmul.cu")
    assert ln.kernel.endswith(f"{'true' if ta else 'false'}, {'true' if tb else 'false'}>")
    plans = dict((n, p) for n, _, p, _, _ in mm_mod.LADDER + [mm_mod.TF32, mm_mod.ITER])
    plan = plans[14 if variant.number == 15 else variant.number]  # 15 launches 14's kernels
    gx, gy, gz = ln.grid
    tiles = (gy * plan.bm, gx * plan.bn) if plan.n_major else (gx * plan.bm, gy * plan.bn)
    assert tiles[0] >= M > tiles[0] - plan.bm and tiles[1] >= N > tiles[1] - plan.bn and gz == batch
    p = [int(x) for x in re.findall(r"\d+", ln.kernel.split("<", 1)[1])]  # template arguments
    threads = ln.block[0] * ln.block[1] * ln.block[2]
    expect_threads = {1: 1024, 2: 1024, 3: 1024, 4: p[0] * p[1] // p[3] if len(p) > 3 else None,
                      5: p[0] * p[1] // (p[3] * p[4]) if len(p) > 4 else None,
                      6: p[0] * p[1] // (p[3] * p[4]) if len(p) > 4 else None}
    if variant.number in (7, 8, 14, 15):
        expect_threads[variant.number] = p[8]
        assert p[8] == (p[0] // p[3]) * (p[1] // p[4]) * 32  # one warp per warp tile
    if variant.number == 9:
        expect_threads[9] = p[3] * p[4] * 32
    assert threads == expect_threads[variant.number], (threads, ln.kernel)
    if variant.number in (8, 14, 15):  # STAGES x (As[BK][BM+4] + Bs[BK][BN+4]) floats
        ring = p[9] * p[2] * ((p[0] + 4) + (p[1] + 4)) * 4
        # 14-15: + a 2-deep staging ring for each k-contiguous operand, 4 16-byte chunks per thread
        assert ln.smem == ring + (2 * 2 * 4 * 16 * p[8] if variant.number >= 14 else 0)
    elif variant.number == 9:  # STAGES x (As[BM][BK+4] + Bs[BN][BK+4]) floats
        assert ln.smem == p[5] * (p[0] + p[1]) * (p[2] + 4) * 4
    else:
        assert ln.smem == 0
    assert ln.smem <= 227 * 1024
    # 14-15 take the split count last (1 here: 18 tiles of 4 k-tiles each are not worth splitting)
    splits = [np.int32] if variant.number >= 14 else []
    assert [type(x) for x in ln.args[3:]] == [np.int32] * 3 + [np.int64] * 3 + splits
    assert [int(x) for x in ln.args[3:]] == [M, N, K, M * K, K * N, M * N] + [1] * len(splits)
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


def _refused(variant, M, N, K, ta, tb, align=256) -> str | None:
    return variant.reason_unsupported(dtype="float32", M=M, N=N, K=K, batch=1, trans_a=ta, trans_b=tb,
                                      out_dtype="float32", align=align)


def _check(out, a, b, ta, tb, variant: _registry.Variant, what: str):
    K = a.shape[-2] if ta else a.shape[-1]
    ref = numpy_ref.matmul(a.astype(np.float64), b.astype(np.float64), ta, tb)
    if "rtol" in variant.extra:  # TF32: its documented contract
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
        if _refused(variant, M, N, K, ta, tb):  # 14: stored rows not a multiple of 4 floats
            with pytest.raises(ValueError, match="floats, not a multiple of 4"):
                _run(backend, variant.key, a, b, ta, tb)
            continue
        out = _run(backend, variant.key, a, b, ta, tb)
        _check(out, a, b, ta, tb, variant, f"{variant.qualname} {backend} M={M} N={N} K={K} ta={ta} tb={tb}")


@pytest.mark.gpu
@pytest.mark.parametrize("ta, tb", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("variant", FP32, ids=lambda v: v.key)
def test_variant_batched(backend, variant, ta, tb, rng):
    """blockIdx.z over the batch: each matrix with its own data, edges in every dimension (for
    14, which takes stored rows of 4k floats only, edges that are multiples of 4)."""
    M, N, K = (132, 68, 44) if _refused(variant, 133, 67, 45, ta, tb) else (133, 67, 45)
    a, b = _operands(rng, M, N, K, ta, tb, batch=3)
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
        if _refused(variant, M, N, K, ta, tb, align=4):  # 14 moves whole 16-byte chunks only
            with pytest.raises(ValueError, match="16-byte aligned"):
                tfm_kernels.matmul(da, db, ta, tb, backend=backend, variant=variant.key, out=out)
            continue
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
