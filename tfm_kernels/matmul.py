"""matmul: C = op(a) @ op(b) on the GPU, the fp32 SGEMM ladder of csrc/matmul.cu and the API that
every matmul variant (these, and the fp16 tensor-core ones of matmul_tc.py) is called through.

Same semantics as ``numpy_ref.matmul`` (the float64 reference the tests compare against):

    2-D:  a (M, K) [trans_a: (K, M)],  b (K, N) [trans_b: (N, K)]         -> (M, N)
    3-D:  a (Bt, M, K) [(Bt, K, M)],   b (Bt, K, N) [(Bt, N, K)]          -> (Bt, M, N)

op(x) is x transposed in place (the kernels read the stored layout directly, no copy), so a linear
layer's three GEMMs are ``matmul(x, W, trans_b=True)``, ``matmul(dY, W)`` and
``matmul(dY, x, trans_a=True)``. Any M, N, K >= 1: edge tiles are handled inside the kernels.

Dtypes and the output:
  * float32 inputs -> float32 output (fp32 accumulation). ``variant="9_tf32_mma"`` (opt-in, never
    the default) rounds the inputs to TF32 on the tensor cores: about 1e-3 relative error.
  * float16 inputs -> float16 output by default, accumulated in fp32 and rounded once at the end;
    pass a float32 ``out`` to keep the fp32 accumulators unrounded (what a mixed-precision
    gradient accumulation wants).
  * a and b must have the same dtype; mixed inputs are refused, not promoted.

Arguments: CUDA arrays (CuPy, or anything with ``__cuda_array_interface__``/DLPack on the GPU),
C-contiguous. Every matrix must be addressable with 32-bit element offsets (M*K, K*N, M*N < 2**31;
the batch dimension is offset in 64-bit), and the batch is at most 65535 (it is the grid's z).
Every check runs on the arrays' metadata before the device is touched, so a bad call raises
TypeError/ValueError naming the argument even on a machine without a GPU.

The variant contract for op ``matmul`` (kept by matmul_tc.py too):
  ``fn(be, a, b, trans_a, trans_b, out)`` with a, b, out validated, C-contiguous CuPy arrays
  (2-D, or 3-D with equal batch, as the user passed them; kernels see raw pointers and the batch
  strides M*K, K*N, M*N), out of dtype float32 or the input dtype;
  ``supports(*, dtype, M, N, K, batch, trans_a, trans_b, out_dtype, align)`` where align is the
  largest power of two (<= 256) dividing the byte addresses of a, b and out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _validate
from ._registry import RUN1_CODE, Launch, Variant, choose, register

OP = "matmul"
SOURCE = "matmul.cu"
DTYPES = ("float32", "float16")
GRID_YZ_MAX = 65535  # gridDim.y and gridDim.z limit; blockIdx.z walks the batch


# ---------------------------------------------------------------------------------------------
# Validation: metadata only, so every error is raised (and testable) without a GPU
# ---------------------------------------------------------------------------------------------

_Meta = _validate.ArrayMeta


def _meta(x, name: str, dtypes, ndim) -> _Meta:
    return _validate.meta(x, name, dtypes=dtypes, ndim=ndim)


def _flag(x, name: str) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(x).__name__}")
    return bool(x)


@dataclass(frozen=True)
class Problem:
    """The validated shape of one call: what launch plans and ``supports`` read."""

    M: int
    N: int
    K: int
    batch: int
    trans_a: bool
    trans_b: bool
    dtype: str
    out_dtype: str
    out_shape: tuple[int, ...]
    align: int

    def info(self) -> dict:
        return dict(M=self.M, N=self.N, K=self.K, batch=self.batch, trans_a=self.trans_a,
                    trans_b=self.trans_b, out_dtype=self.out_dtype, align=self.align)


def _align(*ptrs) -> int:
    a = 256
    for p in ptrs:
        if p is not None:
            while a > 1 and p % a:
                a //= 2
    return a


_overlap = _validate.overlap


def check_problem(a: _Meta, b: _Meta, out: _Meta | None, trans_a: bool, trans_b: bool) -> Problem:
    """Cross-argument rules (rank, batch, inner dimension, dtypes, sizes, limits, aliasing)."""
    if len(a.shape) != len(b.shape):
        raise ValueError(f"b: expected the rank of a ({len(a.shape)}-D, shape {a.shape}), got shape {b.shape}")
    if b.dtype != a.dtype:
        raise TypeError(f"b: expected a's dtype {a.dtype}, got {b.dtype} (mixed inputs are not promoted)")
    for name, m in (("a", a), ("b", b)):
        if min(m.shape) < 1:
            raise ValueError(f"{name}: every dimension must be >= 1, got shape {m.shape}")
    batch = a.shape[0] if len(a.shape) == 3 else 1
    if len(a.shape) == 3 and b.shape[0] != batch:
        raise ValueError(f"b: expected a's batch size {batch}, got shape {b.shape}")
    M, Ka = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
    Kb, N = (b.shape[-1], b.shape[-2]) if trans_b else (b.shape[-2], b.shape[-1])
    if Ka != Kb:
        raise ValueError(f"b: inner dimensions differ: op(a) has K={Ka} (a shape {a.shape}, "
                         f"trans_a={trans_a}), op(b) has K={Kb} (b shape {b.shape}, trans_b={trans_b})")
    K = Ka
    if batch > GRID_YZ_MAX:
        raise ValueError(f"a: batch size {batch} exceeds {GRID_YZ_MAX} (the grid's z dimension)")
    # Each matrix is addressed with int32 offsets inside the kernels (with headroom for loop bounds
    # that step a tile past M, N or K: _validate.INDEX_MAX); the batch offset is int64.
    _validate.check_int32_indexing("a", M, K)
    _validate.check_int32_indexing("b", K, N)
    _validate.check_int32_indexing("out", M, N)
    out_shape = (batch, M, N) if len(a.shape) == 3 else (M, N)
    out_dtype = a.dtype
    if out is not None:
        allowed = ("float32",) if a.dtype == "float32" else ("float16", "float32")
        if out.dtype not in allowed:
            raise TypeError(f"out: expected dtype {' or '.join(allowed)} for {a.dtype} inputs, got {out.dtype}")
        if out.shape != out_shape:
            raise ValueError(f"out: expected shape {out_shape}, got {out.shape}")
        for name, m in (("a", a), ("b", b)):
            if _overlap(out, m):
                raise ValueError(f"out: overlaps {name} in memory; the kernels read {name} while "
                                 f"writing out, so they must be separate buffers")
        out_dtype = out.dtype
    return Problem(M, N, K, batch, trans_a, trans_b, a.dtype, out_dtype, out_shape,
                   _align(a.ptr, b.ptr, None if out is None else out.ptr))


def matmul(a, b, trans_a=False, trans_b=False, *, backend=None, variant=None, out=None):
    """op(a) @ op(b); see the module docstring. Returns ``out`` (allocated when None)."""
    trans_a = _flag(trans_a, "trans_a")
    trans_b = _flag(trans_b, "trans_b")
    if backend is not None and backend not in ("ext", "cupy"):
        raise ValueError(f"backend: expected 'ext', 'cupy' or None, got {backend!r}")
    ma = _meta(a, "a", DTYPES, (2, 3))
    mb = _meta(b, "b", DTYPES, (2, 3))
    mo = None if out is None else _meta(out, "out", DTYPES, (2, 3))
    p = check_problem(ma, mb, mo, trans_a, trans_b)
    if variant is not None:  # a bad name, dtype or shape for the asked-for variant: before the device
        choose(OP, variant, dtype=p.dtype, **p.info())
    # The device from here on.
    a = _validate.as_array(a, "a", dtypes=DTYPES, ndim=(2, 3))
    b = _validate.as_array(b, "b", dtypes=DTYPES, ndim=(2, 3))
    if out is None:
        out = _validate.out_array(None, "out", p.out_shape, p.out_dtype)
    else:
        out = _validate.out_array(out, "out", p.out_shape, p.out_dtype)
    from . import _backend

    be = _backend.get(backend)
    v = choose(OP, variant, dtype=p.dtype, cc=be.cc, **p.info())
    v.fn(be, a, b, p.trans_a, p.trans_b, out)
    return out


# ---------------------------------------------------------------------------------------------
# The fp32 ladder: one launch plan per variant
# ---------------------------------------------------------------------------------------------

def dims(a, b, trans_a: bool, trans_b: bool) -> tuple[int, int, int, int]:
    """(M, N, K, batch) of op(a) @ op(b) for validated 2-D or 3-D arrays."""
    M, K = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
    N = b.shape[-2] if trans_b else b.shape[-1]
    return int(M), int(N), int(K), int(a.shape[0]) if a.ndim == 3 else 1


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _b(x: bool) -> str:
    return "true" if x else "false"


@dataclass(frozen=True)
class Plan:
    """How one fp32 variant launches: ``kernel`` is the name-expression template (``{ta}``/``{tb}``
    filled with the layout), BM x BN the block tile (``n_major``: blockIdx.x walks N tiles and
    blockIdx.y walks M tiles; otherwise the reverse, as in the naive kernel), ``block`` the thread
    block, ``smem`` the dynamic shared memory in bytes."""

    kernel: str
    bm: int
    bn: int
    block: tuple[int, int, int]
    smem: int = 0
    n_major: bool = True

    def name(self, trans_a: bool, trans_b: bool) -> str:
        return self.kernel.format(ta=_b(trans_a), tb=_b(trans_b))

    def grid(self, M: int, N: int, batch: int) -> tuple[int, int, int]:
        if self.n_major:
            return (_cdiv(N, self.bn), _cdiv(M, self.bm), batch)
        return (_cdiv(M, self.bm), _cdiv(N, self.bn), batch)

    def supports(self, *, M, N, **_) -> str | None:
        gy = self.grid(M, N, 1)[1]
        if gy > GRID_YZ_MAX:
            which = "M" if self.n_major else "N"
            return (f"{which}={M if self.n_major else N} needs {gy} tiles of "
                    f"{self.bm if self.n_major else self.bn} along grid y (at most {GRID_YZ_MAX})")
        return None

    def kernels(self) -> tuple[tuple[str, str], ...]:
        return tuple((SOURCE, self.name(ta, tb)) for ta in (False, True) for tb in (False, True))


def _launcher(plan: Plan):
    def fn(be, a, b, trans_a, trans_b, out):
        M, N, K, batch = dims(a, b, trans_a, trans_b)
        be.launch(Launch(
            source=SOURCE, kernel=plan.name(trans_a, trans_b), grid=plan.grid(M, N, batch),
            block=plan.block, smem=plan.smem,
            args=(a, b, out, np.int32(M), np.int32(N), np.int32(K),
                  np.int64(M * K), np.int64(K * N), np.int64(M * N))))
    return fn


# (number, name, plan, hot, description: what changes and the predicted effect)
LADDER = [
    (1, "naive", Plan("matmul_naive<{ta}, {tb}>", 32, 32, (32, 32, 1), n_major=False), False,
     "one thread per output, threadIdx.x walks M: uncoalesced A reads and C writes (~1-2% of cuBLAS)"),
    (2, "coalesced", Plan("matmul_coalesced<{ta}, {tb}>", 32, 32, (32, 32, 1)), False,
     "threadIdx.x walks N: a warp reads 32 consecutive B/C floats in one transaction (~8-10x 1)"),
    (3, "smem_tiling", Plan("matmul_smem<32, {ta}, {tb}>", 32, 32, (32, 32, 1)), False,
     "32x32 tiles of op(A), op(B) staged in shared memory, loaded along their contiguous axis (~1.5x 2)"),
    (4, "blocktile_1d", Plan("matmul_blocktile_1d<64, 64, 8, 8, {ta}, {tb}>", 64, 64, (512, 1, 1)), False,
     "each thread computes 8 outputs of a column: one smem B value feeds 8 FMAs (~2-3x 3)"),
    (5, "blocktile_2d", Plan("matmul_blocktile_2d<128, 128, 8, 8, 8, {ta}, {tb}>", 128, 128, (256, 1, 1)), True,
     "each thread computes an 8x8 block: 16 smem loads feed 64 FMAs (~2x 4)"),
    (6, "vectorized", Plan("matmul_vectorized<128, 128, 8, 8, 8, {ta}, {tb}>", 128, 128, (256, 1, 1)), True,
     "16-byte global loads and a k-major (transposed) A tile: the inner loop reads float4s (~1.2x 5)"),
    (7, "warptiling", Plan("matmul_warptile<128, 128, 8, 32, 64, 2, 4, 4, 256, {ta}, {tb}>", 128, 128,
                           (256, 1, 1)), True,
     "variant 6 with 32x64 warp tiles of 2x2 4x4 lane blocks: conflict-free LDS.128 on both tiles (~1.1x 6)"),
    (8, "cp_async", Plan("matmul_cp_async<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, {ta}, {tb}>", 128, 128,
                         (128, 1, 1), smem=3 * 16 * (128 + 4) * 2 * 4), True,
     "warp tiling at BK=16 (128 threads, 8x16 outputs per lane) fed by a 3-stage cp.async ring "
     "(zero-filled edges): loads overlap FMAs (1.41x 6)"),
]

# TF32 on tensor cores: a different precision contract (inputs rounded to 10 mantissa bits, ~1e-3
# relative error), so it is opt-in: choose() never picks it by default. extra["rtol"] is the
# documented tolerance, |err| <= rtol * sqrt(K) * max|C|, that tests/test_matmul.py holds it to.
TF32 = (9, "tf32_mma", Plan("matmul_tf32<128, 128, 16, 2, 4, 3, {ta}, {tb}>", 128, 128, (256, 1, 1),
                            smem=3 * 2 * 128 * (16 + 4) * 4), False,
        "opt-in: mma.sync m16n8k8 TF32 tensor cores on cvt.rna-rounded inputs, ~1e-3 relative error "
        "(~2-4x cuBLAS fp32)")


def _register_fp32(number, name, plan, hot, description, **kw):
    register(Variant(
        op=OP, number=number, name=name, description=description, fn=_launcher(plan),
        dtypes=("float32",), supports=plan.supports, kernels=plan.kernels(), hot=hot, arch=80,
        **kw))


# What GPU run 1 measured (H200, `tfm-kernels bench --quick`, 4096^3 NN, cuBLAS 51.2 TFLOP/s in the
# same run; benchmarks/results/h200_2026-11-29_run1). 7 was re-shaped after that run; 8 went back
# to the shape that ran (scripts/sass_diff.py --base e4e6558: identical machine code).
_RUN1 = "H200 GPU run 1, 4096^3 fp32 NN: "
MEASURED = {  # 1-6, 8, 9 get _SAME below
    1: "H200 GPU run 1: 0.5 TFLOP/s at 1024^3 (1% of cuBLAS; not timed at 4096^3)",
    2: _RUN1 + "6.0 TFLOP/s (12% of cuBLAS 51.2)",
    3: _RUN1 + "6.7 TFLOP/s (13%)",
    4: _RUN1 + "14.0 TFLOP/s (27%)",
    5: _RUN1 + "21.1 TFLOP/s (41%)",
    6: _RUN1 + "29.5 TFLOP/s (58%)",
    7: _RUN1 + "22.6 TFLOP/s (44%) for the earlier 128-thread shape; the current 256-thread shape "
              "has not run on a GPU (predicted ~32)",
    8: _RUN1 + "41.7 TFLOP/s (81%; 42.2 = 83% at 8192^3)",
    9: _RUN1 + "82.7 TFLOP/s TF32 (1.61x cuBLAS fp32; cuBLAS TF32 is ~359)",
}
# scripts/run1_identity.py: their machine code is byte-identical to what run 1 built and ran.
_SAME = "; " + RUN1_CODE
for _n in (1, 2, 3, 4, 5, 6, 8, 9):
    MEASURED[_n] += _SAME

# Variant 7's 256-thread map was written after run 1 and has not run on a GPU: never the default
# (8 outranks it anyway) until a GPU run clears it.
_EXTRA = {7: {"unverified": "re-shaped after GPU run 1 (256 threads, 32x64 warp tiles); this form "
                            "has passed the host emulation of its source (tests/test_matmul_emulation.py) and SASS "
                            "checks only"}}
for _n, _name, _plan, _hot, _desc in LADDER:
    _register_fp32(_n, _name, _plan, _hot, _desc, measured=MEASURED[_n], extra=_EXTRA.get(_n, {}))
_register_fp32(*TF32, measured=MEASURED[9], extra={"opt_in": True, "rtol": 1e-3})

# 14 keeps 8's tile, threads and ring and rebuilds its copies (csrc/matmul.cu, "14 iterators"); it
# moves only whole 16-byte chunks, so it refuses what 8 handles with 4-byte copies. The FFMA shares
# are those of the steady-state k-loop's SASS (tests/test_sass.py holds them; docs/matmul.md).
ITER = (14, "iterators", Plan("matmul_iter<128, 128, 16, 64, 64, 4, 8, 4, 128, 3, {ta}, {tb}>", 128, 128,
                              (128, 1, 1), smem=3 * 16 * (128 + 4) * 2 * 4 + 2 * 2 * 4 * 4 * 128 * 4), True,
        "8's tile and ring with tile iterators: source pointers set once per block and stepped, m/n "
        "edges clamped, the k edge predicated in the last tile only, the k-contiguous operand staged by "
        "16-byte cp.async and transposed 4x4 in registers: k-loop FFMA share 81% -> 92% (NN), 74% -> 91% "
        "(NT), predicted ~48 TFLOP/s at 8192^3; rows a multiple of 4 floats, 16-byte aligned buffers")


def chunk_refusal(*, M, N, K, trans_a, trans_b, align, elems, unit, who, others) -> str | None:
    """Why a variant that moves whole 16-byte chunks (`elems` elements of `unit`) cannot take these
    operands, or None: every stored row of a and b must hold a multiple of `elems` elements, and a,
    b and out must be 16-byte aligned. `who` says what needs it ("TMA needs"), `others` which
    variants do not."""
    stored = (("a", M if trans_a else K, "M" if trans_a else "K"),
              ("b", K if trans_b else N, "K" if trans_b else "N"))
    for name, n, dim in stored:
        if n % elems:
            return (f"{who} 16-byte row strides: {name}'s stored rows hold {dim} = {n} {unit}, not a "
                    f"multiple of {elems} ({others} take any shape)")
    if align < 16:
        return (f"{who} 16-byte aligned buffers: a, b and out are only {align}-byte aligned ({others} "
                f"take any)")
    return None


def _iter_supports(*, M, N, K, trans_a=False, trans_b=False, align=256, **kw) -> str | None:
    return (chunk_refusal(M=M, N=N, K=K, trans_a=trans_a, trans_b=trans_b, align=align, elems=4,
                          unit="floats", who="its 16-byte copies need", others="variants 1-8")
            or ITER[2].supports(M=M, N=N, **kw))


# 15 runs 14's kernels with K split across CTAs when the M x N tiles would leave SMs idle (1024^3:
# 64 tiles for 132 SMs x 2 CTA slots; a d_model 512 layer's dW: 64). Each split sums a contiguous
# run of k-tiles into its own slice of a workspace (batch x splits matrices), and
# matmul_split_reduce adds the slices in split order: deterministic, like every other variant.
# SPLIT_MIN_KTILES keeps a split long enough for the 3-stage ring to reach its steady state.
SPLIT_MIN_KTILES = 4
SPLIT_MAX = 16


def iter_splits(M: int, N: int, K: int, batch: int, sm_count: int) -> int:
    """How many CTAs share each output tile's K in variant 15: enough to fill one wave of 2 CTAs per
    SM, at most SPLIT_MAX, each with at least SPLIT_MIN_KTILES k-tiles of 16, and never an empty
    split (the count is trimmed to cdiv(k-tiles, k-tiles per split))."""
    tiles = _cdiv(M, 128) * _cdiv(N, 128) * batch
    ktiles = _cdiv(K, 16)
    splits = max(1, min((2 * sm_count) // tiles, ktiles // SPLIT_MIN_KTILES, SPLIT_MAX, GRID_YZ_MAX // batch))
    return _cdiv(ktiles, _cdiv(ktiles, splits))


def _device_id(x) -> int:
    """The CUDA device an array lives on (0 for the host stand-ins of the tests)."""
    return int(getattr(getattr(x, "device", None), "id", 0))


def _iter_launcher(split: bool):
    plan = ITER[2]

    def fn(be, a, b, trans_a, trans_b, out):
        M, N, K, batch = dims(a, b, trans_a, trans_b)
        splits, dst = 1, out
        if split:
            import cupy

            from . import matmul_tc  # the SM count (one helper for the persistent wgmma plan and this)

            splits = iter_splits(M, N, K, batch, matmul_tc._sm_count(_device_id(a)))
            if splits > 1:  # at most 2 x SMs tiles of 128 x 128 floats: ~17 MB on an H200
                dst = cupy.get_array_module(out).empty((batch * splits, M, N), dtype=np.float32)
        gx, gy, _ = plan.grid(M, N, batch)
        be.launch(Launch(
            source=SOURCE, kernel=plan.name(trans_a, trans_b), grid=(gx, gy, batch * splits),
            block=plan.block, smem=plan.smem,
            args=(a, b, dst, np.int32(M), np.int32(N), np.int32(K),
                  np.int64(M * K), np.int64(K * N), np.int64(M * N), np.int32(splits))))
        if splits > 1:
            be.launch(Launch(
                source=SOURCE, kernel="matmul_split_reduce", grid=(_cdiv(_cdiv(M * N, 4), 256), batch, 1),
                block=(256, 1, 1), args=(dst, out, np.int64(M * N), np.int32(splits))))
    return fn


_UNVERIFIED_AFTER_RUN1 = ("written after GPU run 1: compiled (no spills), SASS-checked and its source passes the "
                          "host emulation (tests/test_matmul_emulation.py) only")
register(Variant(
    op=OP, number=ITER[0], name=ITER[1], description=ITER[4], fn=_iter_launcher(False), dtypes=("float32",),
    supports=_iter_supports, kernels=ITER[2].kernels(), hot=ITER[3], arch=80, measured=None,
    extra={"unverified": _UNVERIFIED_AFTER_RUN1 + "; the default over 8 once a GPU run shows it passing and "
                                                  "faster"}))
register(Variant(
    op=OP, number=15, name="split_k",
    description="14's kernels with K split across CTAs when the output tiles fill less than one wave "
                "(2 CTAs per SM): each split sums a run of k-tiles into a workspace slice, a second kernel "
                "adds the slices in order (deterministic). 1024^3: 4 splits, 256 CTAs instead of 64, "
                "predicted ~25-30 TFLOP/s (8: 10.7, cuBLAS 34.1); no split (= 14) at 4096^3",
    fn=_iter_launcher(True), dtypes=("float32",), supports=_iter_supports,
    kernels=ITER[2].kernels() + ((SOURCE, "matmul_split_reduce"),), hot=ITER[3], arch=80, measured=None,
    extra={"unverified": _UNVERIFIED_AFTER_RUN1}))


# ---------------------------------------------------------------------------------------------
# check_cases for `tfm-kernels check` (protocol: tfm_kernels/check.py)
# ---------------------------------------------------------------------------------------------
# Each case runs all four layouts (NN, NT, TN, TT) of one product and returns the four outputs:
# op(A) and op(B) are drawn once and stored both ways, so the one float64 reference serves all
# four. Two kinds of input:
#   "fp16-exact": values drawn in float16, handed to fp32 variants as float32 and to fp16-only
#     variants as float16 with a float32 `out`. Every product is then exact in fp32, TF32 and fp16,
#     so every variant of the op (the tensor-core ones too) answers to the fp32 rule: an indexing
#     slip shows whatever the precision. The first case is also the sanitizer's
#     (scripts/sanitize_cases.py runs the first case of each op on every variant).
#   "fp32": full-precision float32 values, fp32 variants only (fp16 ones report not applicable);
#     the TF32 variant is held to its documented rtol.

def _layout_arrays(opa: np.ndarray, opb: np.ndarray):
    """{(trans_a, trans_b): (a, b)} storing op(A) (..., M, K) and op(B) (..., K, N) each way."""
    at = np.ascontiguousarray(np.swapaxes(opa, -1, -2))
    bt = np.ascontiguousarray(np.swapaxes(opb, -1, -2))
    a = np.ascontiguousarray(opa)
    b = np.ascontiguousarray(opb)
    return {(ta, tb): (at if ta else a, bt if tb else b) for ta in (False, True) for tb in (False, True)}


def _check_case(rng, batch, M, N, K, exact16: bool):
    from . import _registry
    from .check import Case, fp32_rule

    lead = () if batch is None else (batch,)
    opa = rng.standard_normal(lead + (M, K))
    opb = rng.standard_normal(lead + (K, N))
    if exact16:
        opa, opb = opa.astype(np.float16), opb.astype(np.float16)
    else:
        opa, opb = opa.astype(np.float32), opb.astype(np.float32)
    host = _layout_arrays(opa, opb)
    layouts = list(host)
    dev: dict = {}
    state = {"rtol": 1e-6}

    def run(backend, variant):
        import cupy as cp

        v = _registry.get(OP, variant)
        half = exact16 and "float32" not in v.dtypes and "float16" in v.dtypes
        dtype = np.float16 if half else np.float32
        state["rtol"] = v.extra.get("rtol", 1e-6) if not exact16 else 1e-6
        outs = []
        for lay in layouts:
            key = (lay, dtype)
            if key not in dev:
                a, b = host[lay]
                dev[key] = (cp.asarray(a.astype(dtype)), cp.asarray(b.astype(dtype)))
            a, b = dev[key]
            out = cp.full(lead + (M, N), np.nan, dtype=cp.float32)
            outs.append(matmul(a, b, lay[0], lay[1], backend=backend, variant=variant, out=out))
        return tuple(outs)

    def reference():
        from numpy_ref import matmul as ref_matmul

        r = ref_matmul(opa.astype(np.float64), opb.astype(np.float64))
        return (r,) * len(layouts)

    def rule(out, ref):
        return fp32_rule(reduction=K, rtol=state["rtol"])(out, ref)

    shape = f"{'' if batch is None else f'{batch}x'}M={M} N={N} K={K}"
    kind = "fp16-exact inputs, every variant" if exact16 else "fp32 inputs"
    return Case(OP, f"{shape}, NN/NT/TN/TT, {kind}", run, reference, (rule,) * len(layouts))


def check_cases(rng: np.random.Generator, quick: bool):
    # (batch, M, N, K). First: the sanitizer's case, small, batched, every edge: M, N multiples of 4
    # with ragged tiles (the 16-byte paths of a transposed A / plain B run up to an edge) and K odd
    # (the K-contiguous operands take the scalar paths).
    # Last: every stored row a multiple of 4 floats in every layout (the only shapes variants 14-15
    # take), M past a 128-tile edge, K = 132 (eight full k-tiles and an edge one: 15 splits it in
    # two on a GPU of 132 SMs).
    quick_shapes = [(2, 68, 44, 37), (None, 1, 1, 1), (None, 129, 127, 1001), (2, 132, 68, 132)]
    full_shapes = quick_shapes + [
        (None, 7, 5, 3), (None, 1000, 17, 97), (None, 17, 1000, 63), (None, 64, 96, 4097),
        (None, 4097, 3, 33), (None, 5, 4097, 33), (None, 256, 384, 128), (3, 133, 67, 45),
    ]
    for shape in quick_shapes if quick else full_shapes:
        yield _check_case(rng, *shape, exact16=True)
    for shape in (quick_shapes[:1] + quick_shapes[2:]) if quick else full_shapes:
        yield _check_case(rng, *shape, exact16=False)
