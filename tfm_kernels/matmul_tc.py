"""matmul, fp16 on tensor cores: the launch plans of csrc/matmul_tc.cu (mma.sync) and
csrc/matmul_sm90.cu (Hopper wgmma), registered as variants 10 and up of op ``matmul``.

fp16 inputs, fp32 accumulation, fp16 or fp32 output (the dtype of ``out``). The fp32 ladder
(variants 1..9) and the op's wrapper, validation and output allocation live in
``tfm_kernels/matmul.py``; a variant here receives validated C-contiguous CuPy arrays:

    fn(be, a, b, trans_a, trans_b, out)
      a: (M, K) or, trans_a, (K, M); b: (K, N) or, trans_b, (N, K); 3-D: a leading batch axis of
      equal size on a, b and out; out: (M, N) float16 or float32.

Ladder (docs/matmul_tc.md has the figures):
  10 mma_sync       mma.sync m16n8k16 + ldmatrix, 128x128x32 CTA tile, 4 warps of 64x64, one stage
  11 mma_pipelined  + 4-stage cp.async pipeline, XOR-swizzled (conflict-free) shared tiles
"""

from __future__ import annotations

import numpy as np

from ._registry import Launch, Variant, register

SOURCE_MMA = "matmul_tc.cu"

# CTA tile of matmul_mma (csrc/matmul_tc.cu): BM x BN x BK, WARPS_M x WARPS_N warps.
_MMA_TILE = (128, 128, 32, 2, 2)
_MMA_THREADS = _MMA_TILE[3] * _MMA_TILE[4] * 32
_GRID_YZ_MAX = 65535


def _c_type(dtype) -> str:
    return {"float32": "float", "float16": "__half"}[np.dtype(dtype).name]


def _cxx_bool(x: bool) -> str:
    return "true" if x else "false"


def problem(a, b, trans_a: bool, trans_b: bool):
    """(batch, M, N, K) of op(a) @ op(b) for 2-D or equal-batch 3-D arrays."""
    batch = a.shape[0] if a.ndim == 3 else 1
    M, K = (a.shape[-1], a.shape[-2]) if trans_a else (a.shape[-2], a.shape[-1])
    N = b.shape[-2] if trans_b else b.shape[-1]
    return batch, M, N, K


def _aligned16(x) -> bool:
    """Every 8-half (16-byte) chunk of every row of x starts 16-byte aligned and lies wholly inside
    or wholly outside the row: the contiguous extent is a multiple of 8 halves and the base is
    16-byte aligned (CuPy's allocations are 256-byte aligned; a sliced view may not be)."""
    return x.shape[-1] % 8 == 0 and x.data.ptr % 16 == 0


def mma_kernel_name(stages: int, swizzle: bool, trans_a: bool, trans_b: bool, aligned: bool,
                    out_dtype) -> str:
    bm, bn, bk, wm, wn = _MMA_TILE
    return (f"matmul_mma<{bm}, {bn}, {bk}, {wm}, {wn}, {stages}, {_cxx_bool(swizzle)}, "
            f"{_cxx_bool(trans_a)}, {_cxx_bool(trans_b)}, {_cxx_bool(aligned)}, {_c_type(out_dtype)}>")


def _mma_smem(stages: int) -> int:
    bm, bn, bk, _, _ = _MMA_TILE
    return stages * (bm * bk + bk * bn) * 2


def _mma_launch(stages: int, swizzle: bool, a, b, trans_a: bool, trans_b: bool, out) -> Launch:
    batch, M, N, K = problem(a, b, trans_a, trans_b)
    bm, bn, _, _, _ = _MMA_TILE
    aligned = _aligned16(a) and _aligned16(b)
    # Leading dimensions are the stored rows' lengths (inputs are C-contiguous); batch strides are
    # whole matrices.
    lda, ldb, ldc = a.shape[-1], b.shape[-1], out.shape[-1]
    sa, sb, sc = (M * K, K * N, M * N) if batch > 1 else (0, 0, 0)
    return Launch(
        source=SOURCE_MMA,
        kernel=mma_kernel_name(stages, swizzle, trans_a, trans_b, aligned, out.dtype),
        grid=(-(-N // bn), -(-M // bm), batch),
        block=(_MMA_THREADS, 1, 1),
        args=(a, b, out, np.int32(M), np.int32(N), np.int32(K), np.int64(lda), np.int64(ldb),
              np.int64(ldc), np.int64(sa), np.int64(sb), np.int64(sc)),
        smem=_mma_smem(stages),
    )


def _mma_fn(stages: int, swizzle: bool):
    def fn(be, a, b, trans_a, trans_b, out):
        be.launch(_mma_launch(stages, swizzle, a, b, bool(trans_a), bool(trans_b), out))
        return out

    return fn


def _mma_supports(**info) -> str | None:
    m, batch = info.get("M", info.get("m")), info.get("batch", 1)
    if m is not None and -(-int(m) // _MMA_TILE[0]) > _GRID_YZ_MAX:
        return f"M = {m} needs more than {_GRID_YZ_MAX} row tiles of {_MMA_TILE[0]} (grid.y limit)"
    if batch is not None and int(batch) > _GRID_YZ_MAX:
        return f"batch = {batch} exceeds the grid.z limit {_GRID_YZ_MAX}"
    return None


def _mma_kernels(stages: int, swizzle: bool) -> tuple[tuple[str, str], ...]:
    return tuple((SOURCE_MMA, mma_kernel_name(stages, swizzle, ta, tb, al, od))
                 for ta in (False, True) for tb in (False, True) for al in (True, False)
                 for od in ("float32", "float16"))


register(Variant(
    op="matmul", number=10, name="mma_sync",
    description="fp16 tensor cores: mma.sync m16n8k16 on ldmatrix fragments, fp32 accumulators, "
                "128x128x32 CTA tile, 4 warps of 64x64, one shared-memory stage (load, wait, compute)",
    fn=_mma_fn(1, False), dtypes=("float16",), supports=_mma_supports,
    kernels=_mma_kernels(1, False), hot=False, arch=80,
))

register(Variant(
    op="matmul", number=11, name="mma_pipelined",
    description="+ 4-stage cp.async pipeline (3 tiles in flight during each compute) and XOR-swizzled "
                "shared tiles: conflict-free ldmatrix and cp.async stores",
    fn=_mma_fn(4, True), dtypes=("float16",), supports=_mma_supports,
    kernels=_mma_kernels(4, True), hot=True, arch=80,
))
