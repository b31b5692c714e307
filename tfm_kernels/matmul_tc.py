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
  12 wgmma_tma      Hopper (sm_90a): wgmma m64n256k16 from 128B-swizzled smem filled by TMA,
                    mbarrier pipeline, producer/consumer warpgroups with setmaxnreg
  13 wgmma_persistent  the same kernel, one CTA per SM looping over tiles: loads of tile i+1
                    overlap the epilogue of tile i

The TMA descriptors (CUtensorMap, 128 bytes) are encoded on the host with the driver's
cuTensorMapEncodeTiled through cuda-bindings and passed to the kernel by value as ``bytes``.
"""

from __future__ import annotations

import functools
import struct

import numpy as np

from ._registry import RUN1_CODE, Launch, Variant, register
from .matmul import chunk_refusal

SOURCE_MMA = "matmul_tc.cu"
SOURCE_SM90 = "matmul_sm90.cu"

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


def _register_mma(number: int, name: str, stages: int, swizzle: bool, hot: bool, description: str,
                  measured: str) -> None:
    """One matmul_mma configuration: its launcher and its exported kernels from the same
    (stages, swizzle)."""
    register(Variant(
        op="matmul", number=number, name=name, description=description,
        fn=_mma_fn(stages, swizzle), dtypes=("float16",), supports=_mma_supports,
        kernels=_mma_kernels(stages, swizzle), hot=hot, arch=80, measured=measured,
    ))


_RUN1 = "H200, tfm-kernels bench --quick, GPU run 1 (2026-11-29)"

_register_mma(
    10, "mma_sync", stages=1, swizzle=False, hot=False,
    description="fp16 tensor cores: mma.sync m16n8k16 on ldmatrix fragments, fp32 accumulators, "
                "128x128x32 CTA tile, 4 warps of 64x64, one shared-memory stage (load, wait, compute)",
    measured="122.9 TFLOP/s at 8192^3 fp16 NN, 16% of cuBLAS (763.7); " + _RUN1 + "; " + RUN1_CODE,
)
_register_mma(
    11, "mma_pipelined", stages=4, swizzle=True, hot=True,
    description="+ 4-stage cp.async pipeline (3 tiles in flight during each compute) and XOR-swizzled "
                "shared tiles: conflict-free ldmatrix and cp.async stores",
    measured="329.1 TFLOP/s at 8192^3 fp16 NN, 2.7x variant 10, 43% of cuBLAS (763.7); " + _RUN1 + "; "
             + RUN1_CODE,
)


# ---------------------------------------------------------------------------------------------
# 12-13: wgmma + TMA (csrc/matmul_sm90.cu)
# ---------------------------------------------------------------------------------------------

# CTA tile 128 x 256 x 64, 4 stages, 3 warpgroups (1 producer, 2 consumers).
_WG_BM, _WG_BN, _WG_BK, _WG_STAGES = 128, 256, 64, 4
_WG_THREADS = 384
# Stages (16 KiB A + 32 KiB B each), 2 mbarriers per stage, and 1 KiB of slack so the kernel can
# round its dynamic shared memory up to the 1024-byte alignment the 128-byte swizzle atoms need.
_WG_SMEM = _WG_STAGES * (_WG_BM * _WG_BK * 2 + _WG_BN * _WG_BK * 2) + 2 * _WG_STAGES * 8 + 1024


def wgmma_kernel_name(trans_a: bool, trans_b: bool, out_dtype) -> str:
    return (f"matmul_wgmma<{_WG_BN}, {_WG_STAGES}, {_cxx_bool(trans_a)}, {_cxx_bool(trans_b)}, "
            f"{_c_type(out_dtype)}>")


@functools.cache
def _driver():
    """cuda-bindings' driver module, initialised (cuInit is idempotent; CuPy has usually done it)."""
    from cuda.bindings import driver

    (err,) = driver.cuInit(0)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuInit failed: {err.name}")
    return driver


@functools.cache
def _encoder_missing() -> str | None:
    try:
        from cuda.bindings import driver  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the install
        return (f"TMA descriptors are encoded with cuda-bindings' cuTensorMapEncodeTiled, which is not "
                f"importable ({type(e).__name__}: {e}); pip install cuda-bindings")
    return None


def tma_encode_args(drv, ptr: int, inner: int, outer: int, batch: int, box_inner: int,
                    box_outer: int) -> tuple:
    """cuTensorMapEncodeTiled's arguments for a C-contiguous fp16 tensor (batch, outer, inner) read
    in (box_outer x box_inner) boxes into 128-byte-swizzled shared memory, zero-filled outside.
    cuda-bindings wants its cuuint64_t / cuuint32_t wrappers in the arrays (plain ints raise
    TypeError there)."""
    u64, u32 = drv.cuuint64_t, drv.cuuint32_t
    return (
        drv.CUtensorMapDataType.CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, ptr,
        [u64(inner), u64(outer), u64(batch)],          # dims, innermost first
        [u64(inner * 2), u64(inner * outer * 2)],      # byte strides of dims 1 and 2
        [u32(box_inner), u32(box_outer), u32(1)],
        [u32(1), u32(1), u32(1)],
        drv.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        drv.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        drv.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        drv.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
    )


@functools.lru_cache(maxsize=512)
def tma_descriptor(ptr: int, inner: int, outer: int, batch: int, box_inner: int, box_outer: int) -> bytes:
    """The 128-byte CUtensorMap (see tma_encode_args), as the bytes the kernel takes by value.
    Cached: the descriptor depends only on these numbers."""
    drv = _driver()
    err, tmap = drv.cuTensorMapEncodeTiled(*tma_encode_args(drv, ptr, inner, outer, batch, box_inner, box_outer))
    if err != drv.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled failed ({err.name}) for a tensor of "
                           f"{batch} x {outer} x {inner} halves at {ptr:#x}, box {box_outer} x {box_inner}")
    return struct.pack("<16Q", *(int(w) for w in tmap.opaque))


@functools.cache
def _sm_count(device_id: int) -> int:
    import cupy

    return int(cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"])


def _wgmma_launch(a, b, trans_a: bool, trans_b: bool, out, persistent: bool) -> Launch:
    batch, M, N, K = problem(a, b, trans_a, trans_b)
    # A tile: {64 k, 128 m} K-major, or two {64 m, 64 k} boxes M-major; B tile: {64 k, 256 n}
    # K-major, or four {64 n, 64 k} boxes N-major (csrc/matmul_sm90.cu).
    box_a = (64, 64) if trans_a else (64, 128)
    box_b = (64, 256) if trans_b else (64, 64)
    da = tma_descriptor(a.data.ptr, a.shape[-1], a.shape[-2], batch, *box_a)
    db = tma_descriptor(b.data.ptr, b.shape[-1], b.shape[-2], batch, *box_b)
    tiles = -(-M // _WG_BM) * -(-N // _WG_BN) * batch
    # One CTA per tile, or (persistent) one per SM looping over tiles t = blockIdx.x + i * gridDim.x:
    # the 197 KiB of shared memory allow one CTA per SM either way.
    grid_x = min(tiles, _sm_count(a.device.id)) if persistent else tiles
    return Launch(
        source=SOURCE_SM90,
        kernel=wgmma_kernel_name(trans_a, trans_b, out.dtype),
        grid=(grid_x, 1, 1),
        block=(_WG_THREADS, 1, 1),
        args=(da, db, out, np.int32(M), np.int32(N), np.int32(K), np.int32(batch),
              np.int64(out.shape[-1]), np.int64(M * N if batch > 1 else 0)),
        smem=_WG_SMEM,
    )


def _wgmma_fn(persistent: bool):
    def fn(be, a, b, trans_a, trans_b, out):
        be.launch(_wgmma_launch(a, b, bool(trans_a), bool(trans_b), out, persistent))
        return out

    return fn


def _wgmma_supports(*, M, N, K, batch=1, trans_a=False, trans_b=False, align=256, **_) -> str | None:
    # TMA reads global memory through 16-byte strides: every stored row a multiple of 8 halves.
    why = chunk_refusal(M=M, N=N, K=K, trans_a=trans_a, trans_b=trans_b, align=align, elems=8,
                        unit="halves", who="TMA needs", others="variants 10-11")
    if why:
        return why
    tiles = -(-M // _WG_BM) * -(-N // _WG_BN) * batch
    if tiles > 2**31 - 1:
        return f"{tiles} tiles of {_WG_BM} x {_WG_BN} exceed the grid's x limit"
    return _encoder_missing()


# GPU run 1 stopped both wgmma variants at a host-side TypeError (cuda-bindings' cuuint32_t), before
# any launch; the fix came after that run, so neither has executed on a GPU yet.
_WGMMA_UNVERIFIED = ("never run on a GPU: GPU run 1 (H200, 2026-11-29) stopped at a host-side TypeError "
                     "before launching (fixed since); compiled, SASS-checked, and its source passes the host emulation "
                     "(mbarrier ring, TMA boxes, wgmma; tests/test_matmul_emulation.py) only")

_WGMMA_KERNELS = tuple((SOURCE_SM90, wgmma_kernel_name(ta, tb, od)) for ta in (False, True)
                       for tb in (False, True) for od in ("float32", "float16"))

def _register_wgmma(number: int, name: str, persistent: bool, description: str) -> None:
    register(Variant(
        op="matmul", number=number, name=name, description=description,
        fn=_wgmma_fn(persistent), dtypes=("float16",), supports=_wgmma_supports,
        kernels=_WGMMA_KERNELS, hot=True, arch=90, extra={"unverified": _WGMMA_UNVERIFIED},
    ))


_register_wgmma(
    12, "wgmma_tma", persistent=False,
    description="Hopper: wgmma m64n256k16 on 128B-swizzled smem filled by TMA (cp.async.bulk.tensor), "
                "4-stage mbarrier pipeline, 1 producer + 2 consumer warpgroups (setmaxnreg 40/232), "
                "128x256x64 tiles in grouped order, one CTA per tile; sm_90a",
)
_register_wgmma(
    13, "wgmma_persistent", persistent=True,
    description="+ persistent CTAs: one per SM, each looping over its tiles with the stage ring "
                "still turning, so the next tile's TMA loads overlap this tile's epilogue",
)
