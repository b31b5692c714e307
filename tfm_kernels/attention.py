"""Attention forward and backward: the API, its validation, and the fp32 variants.

    o, lse = attention_forward(q, k, v, causal=False, kv_lens=None, scale=None,
                               *, backend=None, variant=None, out=None)
    dq, dk, dv = attention_backward(do, q, k, v, o, lse, causal=False, kv_lens=None, scale=None,
                                    *, backend=None, variant=None, out=None)

Exactly ``numpy_ref.attention_forward/backward``'s semantics: q ``(B, H, Lq, D)``, k and v
``(B, H, Lk, D)`` (Lq may differ from Lk), top-left causal (key j > query i hidden), ``kv_lens``
``(B,)`` hiding keys ``j >= kv_lens[b]``, ``scale`` defaulting to ``1/sqrt(D)``, ``lse``
``(B, H, Lq)`` float32 whatever the input dtype. A row that sees no key gives ``o = 0``,
``lse = -inf`` and zero gradients, never NaN. ``out`` is ``(o, lse)`` in forward and
``(dq, dk, dv)`` in backward: buffers the caller owns (the tests poison them with NaN first).

The ladder (``tfm_kernels.variants("attention_forward")``; this module owns numbers 1-9, the
fp16 tensor-core variants of ``attention_tc.py`` use 10 and up):

    forward   1_naive       S = Q K^T and O = P V by this project's matmul, P by its softmax,
                            masking and lse by two small kernels: the baseline, S materialized
              2_flash       fp32 FlashAttention-2 forward: K_j/V_j tiles in shared memory, online
                            softmax in registers, one pass, writes o and lse; nothing Lq x Lk stored
              3_flash_r8    as 2 with 128-row query blocks, 8 rows per thread (fewer shared loads
                            per FMA, one CTA per SM); opt-in (variant=3)
              4_flash_r8_async
                            as 3, K_j/V_j double-buffered by cp.async; opt-in (variant=4)
    backward  1_naive       the same composition for P, dV = P^T dO, dP = dO V^T, dS by this
                            project's softmax_backward, dQ = scale dS K, dK = scale dS^T Q
              2_flash       fp32 FlashAttention-2 backward: one CTA per key block, P recomputed from
                            lse, dK_j/dV_j in registers, dQ by float atomicAdd (order varies by run)
              3_flash_det   as 2, but dQ by a second kernel per query block that walks the key
                            blocks in order: bitwise reproducible, no float atomics, ~1.3x the
                            work; opt-in (variant=3)
              4_flash_r8    as 2 with 128-key blocks, 8 keys per thread (head dims 32, 64);
                            opt-in (variant=4)

The variant protocol (what a registered ``fn`` receives; every variant of both ops, including
the tensor-core ones, follows it). The op validates everything first, so a variant trusts its
arguments:

    forward:  fn(be, q, k, v, kv_lens, causal, scale, o, lse) -> None
    backward: fn(be, do, q, k, v, o, lse, kv_lens, causal, scale, dq, dk, dv) -> None

    be          the backend object (``be.launch(Launch(...))``, ``be.name`` for composed ops)
    q, k, v     CuPy arrays, C-contiguous, one dtype (a variant's ``dtypes``), 16-byte aligned,
                shapes (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D); do and o like q
    lse         float32 (B, H, Lq), C-contiguous (backward: as the forward wrote it)
    kv_lens     ALWAYS a CuPy int32 array (B,) with 0 <= kv_lens[b] <= Lk; filled with Lk when
                the caller passed None, so kernels have one code path and no null pointer
    causal      Python bool; scale: Python float, finite (the default 1/sqrt(D) already applied)
    o, lse, dq, dk, dv
                outputs: C-contiguous, q's dtype (lse float32), possibly NaN-poisoned. The
                variant writes EVERY element (zero-fill what it accumulates into); scratch
                buffers it needs it allocates itself with ``cupy.empty``.

    supports(dtype, batch, heads, seqlen_q, seqlen_k, head_dim, causal) -> None | reason

Validation (one layer, before any launch; TypeError/ValueError naming the argument, all of it
testable without a GPU because only metadata is read until the last step): q, k, v (and do, o,
lse) CUDA arrays of rank 4 (lse 3), float32 or float16, one dtype (lse float32), C-contiguous,
16-byte aligned, shapes consistent, no empty dimension; head_dim supported by the chosen variant;
``causal`` a bool; ``scale`` a finite real; ``kv_lens`` an integer array (host, or CuPy and read
back) of shape (B,) with values in [0, Lk]; per-head element counts within int32 offsets.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _validate
from ._registry import RUN1_CODE, Launch, Variant, choose, register

SOURCE = "attention.cu"
FLOAT_DTYPES = ("float32", "float16")
# Head dims with a compiled instantiation of the fp32 flash kernels (template parameter HEAD_DIM):
# each thread owns HEAD_DIM / 16 output columns, so HEAD_DIM must be a multiple of 32 (float4 or
# float2 column groups), and above 128 the per-thread accumulators (dK and dV: 2 x 4 x 128/16 = 64
# registers) and the 4 shared tiles of the backward (4 x 64 x 132 x 4 B = 135 KB) stop fitting.
FLASH_HEAD_DIMS = (32, 64, 96, 128)
BLOCK_Q = 64       # query rows per tile (csrc/attention.cu: ATT_BQ)
BLOCK_K = 64       # keys per tile (ATT_BK)
THREADS = 256      # 16 x 16 threads: ty owns 4 rows, tx owns 4 score columns / HEAD_DIM/16 columns


# --------------------------------------------------------------------------------------------------
# Validation: metadata first (works without a GPU), device arrays last.

def _meta(x, name):
    """(dtype name, shape, c_contiguous, data pointer or None) of a CUDA array, read without
    touching the device; dtype and layout are checked by the caller. Host arrays and other objects
    get as_array's TypeError."""
    m = _validate.meta(x, name)
    return m.dtype, m.shape, m.contiguous, m.ptr


def _check_tensor(x, name, ndim, dtypes):
    dt, shape, contiguous, ptr = _meta(x, name)
    _validate._check_meta(name, dt, shape, contiguous, dtypes, ndim)
    if any(n == 0 for n in shape):
        raise ValueError(f"{name}: no dimension may be empty, got shape {shape}")
    # Kernels load rows as float4 (16 bytes); a contiguous array whose base is not 16-byte aligned
    # (a view starting mid-row of a flat buffer) would fault, so it is refused here.
    if ptr is not None and ptr % 16:
        raise ValueError(f"{name}: data pointer {ptr:#x} is not 16-byte aligned (kernels load "
                         f"16-byte vectors); pass a freshly allocated or row-aligned array")
    return dt, shape


def _check_flag(causal):
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal: expected a bool, got {type(causal).__name__}")
    return bool(causal)


def _check_scale(scale, head_dim):
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale: must be finite, got {scale}")
    return scale


def _check_kv_lens(kv_lens, batch, seqlen_k):
    """kv_lens as a host int64 array (B,) with values in [0, Lk], or None."""
    if kv_lens is None:
        return None
    if hasattr(kv_lens, "__cuda_array_interface__") and not isinstance(kv_lens, np.ndarray):
        dt, shape, _, _ = _meta(kv_lens, "kv_lens")
        if np.dtype(dt).kind not in "iu":
            raise TypeError(f"kv_lens: expected an integer array, got dtype {dt}")
        if shape != (batch,):
            raise ValueError(f"kv_lens: expected shape (B,) = ({batch},), got {shape}")
        # Values must be checked before the launch: one small device-to-host copy (B integers).
        kv_lens = _validate.as_array(kv_lens, "kv_lens", dtypes=(dt,)).get()
    if isinstance(kv_lens, (bool, np.bool_)):
        raise TypeError("kv_lens: expected an integer array of shape (B,), got bool")
    try:
        a = np.asarray(kv_lens)
    except Exception as e:  # ragged lists
        raise TypeError(f"kv_lens: expected an integer array of shape (B,): {e}") from None
    if a.dtype.kind not in "iu":
        raise TypeError(f"kv_lens: expected an integer array, got dtype {a.dtype}")
    if a.shape != (batch,):
        raise ValueError(f"kv_lens: expected shape (B,) = ({batch},), got {a.shape}")
    if a.size and (a.min() < 0 or a.max() > seqlen_k):
        raise ValueError(f"kv_lens: values must lie in [0, Lk] = [0, {seqlen_k}], got min "
                         f"{int(a.min())}, max {int(a.max())}")
    return a.astype(np.int64)


def _check_sizes(B, H, Lq, Lk, D):
    # Kernels address one head with int32 offsets (row * D + col) and the (batch, head) base with
    # int64; the grid's x dimension holds (query or key blocks) x B x H.
    _validate.check_int32_indexing("q", Lq, D)
    _validate.check_int32_indexing("k", Lk, D)
    _validate.check_int32_indexing("q", B * H, Lq)   # lse / D_i rows, indexed in int32
    _validate.check_int32_indexing("q", B * H, -(-max(Lq, Lk) // BLOCK_Q))


def _check_qkv(q, k, v, causal, kv_lens, scale):
    dt, (B, H, Lq, D) = _check_tensor(q, "q", 4, FLOAT_DTYPES)
    dtk, kshape = _check_tensor(k, "k", 4, FLOAT_DTYPES)
    dtv, vshape = _check_tensor(v, "v", 4, FLOAT_DTYPES)
    if dtk != dt:
        raise TypeError(f"k: dtype {dtk} differs from q's {dt}")
    if dtv != dt:
        raise TypeError(f"v: dtype {dtv} differs from q's {dt}")
    if kshape[0] != B or kshape[1] != H or kshape[3] != D:
        raise ValueError(f"k: expected shape (B, H, Lk, D) = ({B}, {H}, Lk, {D}) to match q "
                         f"{(B, H, Lq, D)}, got {kshape}")
    if vshape != kshape:
        raise ValueError(f"v: expected k's shape {kshape}, got {vshape}")
    Lk = kshape[2]
    causal = _check_flag(causal)
    kv_lens = _check_kv_lens(kv_lens, B, Lk)
    scale = _check_scale(scale, D)
    _check_sizes(B, H, Lq, Lk, D)
    info = dict(batch=B, heads=H, seqlen_q=Lq, seqlen_k=Lk, head_dim=D, causal=causal)
    return dt, info, causal, kv_lens, scale


def _check_out(out, names, shapes, dtypes):
    if out is None:
        return None
    if not isinstance(out, (tuple, list)) or len(out) != len(names):
        raise TypeError(f"out: expected a tuple ({', '.join(names)}) or None, got "
                        f"{type(out).__name__}" + (f" of length {len(out)}"
                                                   if isinstance(out, (tuple, list)) else ""))
    for x, name, shape, dt in zip(out, names, shapes, dtypes):
        xdt, xshape = _check_tensor(x, f"out[{names.index(name)}] ({name})", len(shape), (dt,))
        if xshape != tuple(shape):
            raise ValueError(f"out[{names.index(name)}] ({name}): expected shape {tuple(shape)}, "
                             f"got {xshape}")
    return out


def _device_kv_lens(kv_lens, batch, seqlen_k):
    import cupy

    if kv_lens is None:
        return cupy.full((batch,), seqlen_k, dtype=cupy.int32)
    return cupy.asarray(kv_lens.astype(np.int32))


def _backend_for(backend):
    from . import _backend

    be = _backend.get(backend)
    return be, getattr(be, "cc", None)


# --------------------------------------------------------------------------------------------------
# The ops

def attention_forward(q, k, v, causal=False, kv_lens=None, scale=None, *, backend=None,
                      variant=None, out=None):
    """(o, lse): o = softmax(scale q k^T, masked) v, lse the log-sum-exp of each row's scores."""
    dt, info, causal, kv_lens_h, scale = _check_qkv(q, k, v, causal, kv_lens, scale)
    B, H, Lq, D = info["batch"], info["heads"], info["seqlen_q"], info["head_dim"]
    _check_out(out, ("o", "lse"), ((B, H, Lq, D), (B, H, Lq)), (dt, "float32"))
    # Chosen before the backend exists so a bad variant/head_dim fails without a GPU; chosen again
    # with the device's compute capability once it is known.
    chosen = choose("attention_forward", variant, dtype=dt, **info)
    be, cc = _backend_for(backend)
    if cc is not None:
        chosen = choose("attention_forward", variant, dtype=dt, cc=cc, **info)
    q = _validate.as_array(q, "q", dtypes=(dt,), ndim=4)
    k = _validate.as_array(k, "k", dtypes=(dt,), ndim=4)
    v = _validate.as_array(v, "v", dtypes=(dt,), ndim=4)
    if out is None:
        o = _validate.out_array(None, "out[0] (o)", (B, H, Lq, D), dt)
        lse = _validate.out_array(None, "out[1] (lse)", (B, H, Lq), "float32")
    else:
        o = _validate.out_array(out[0], "out[0] (o)", (B, H, Lq, D), dt)
        lse = _validate.out_array(out[1], "out[1] (lse)", (B, H, Lq), "float32")
    kvl = _device_kv_lens(kv_lens_h, B, info["seqlen_k"])
    chosen.fn(be, q, k, v, kvl, causal, scale, o, lse)
    return o, lse


def attention_backward(do, q, k, v, o, lse, causal=False, kv_lens=None, scale=None, *,
                       backend=None, variant=None, out=None):
    """(dq, dk, dv) of attention_forward, given its o and lse; no-key rows give zero gradients."""
    dt, info, causal, kv_lens_h, scale = _check_qkv(q, k, v, causal, kv_lens, scale)
    B, H, Lq, Lk, D = (info["batch"], info["heads"], info["seqlen_q"], info["seqlen_k"],
                       info["head_dim"])
    for x, name in ((do, "do"), (o, "o")):
        xdt, xshape = _check_tensor(x, name, 4, FLOAT_DTYPES)
        if xdt != dt:
            raise TypeError(f"{name}: dtype {xdt} differs from q's {dt}")
        if xshape != (B, H, Lq, D):
            raise ValueError(f"{name}: expected q's shape {(B, H, Lq, D)}, got {xshape}")
    _, lshape = _check_tensor(lse, "lse", 3, ("float32",))
    if lshape != (B, H, Lq):
        raise ValueError(f"lse: expected shape (B, H, Lq) = {(B, H, Lq)}, got {lshape}")
    _check_out(out, ("dq", "dk", "dv"), ((B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D)), (dt,) * 3)
    chosen = choose("attention_backward", variant, dtype=dt, **info)
    be, cc = _backend_for(backend)
    if cc is not None:
        chosen = choose("attention_backward", variant, dtype=dt, cc=cc, **info)
    arrays = [_validate.as_array(x, name, dtypes=(dt,), ndim=4)
              for x, name in ((do, "do"), (q, "q"), (k, "k"), (v, "v"), (o, "o"))]
    lse = _validate.as_array(lse, "lse", dtypes=("float32",), ndim=3)
    shapes = ((B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D))
    names = ("out[0] (dq)", "out[1] (dk)", "out[2] (dv)")
    grads = [_validate.out_array(None if out is None else out[i], names[i], shapes[i], dt)
             for i in range(3)]
    kvl = _device_kv_lens(kv_lens_h, B, Lk)
    do_, q_, k_, v_, o_ = arrays
    chosen.fn(be, do_, q_, k_, v_, o_, lse, kvl, causal, scale, *grads)
    return tuple(grads)


# --------------------------------------------------------------------------------------------------
# Variants (fn(be, ...) per the protocol in the module docstring)

LOG2E = 1.4426950408889634


def _flash_supports(dtype, head_dim, **_):
    if head_dim not in FLASH_HEAD_DIMS:
        return (f"head_dim {head_dim} is not one of {FLASH_HEAD_DIMS} (the compiled "
                f"instantiations; use variant '1_naive' for any head_dim)")
    return None


def _flash_smem_fwd(D, rows=4, stages=1):
    # Q_i (16 * rows query rows) and, per stage, V_j (64 keys) with row stride D + 4 floats and K_j,
    # whose buffer the P tile (16 * rows x 68) reuses.
    bq = 16 * rows
    return 4 * (bq * (D + 4) + stages * (BLOCK_K * (D + 4) + max(BLOCK_K * (D + 4), bq * (BLOCK_K + 4))))


def _flash_smem_bwd(D, rows=4):
    # K_j, V_j (16 * rows keys), Q_i, dO_i (64 queries) tiles, the P^T / dS^T tile (keys x 68),
    # lse_i and D_i (64 each). The dQ kernel (rows = 4) has the same layout with Q/K swapped.
    bk = 16 * rows
    return 4 * (2 * bk * (D + 4) + 2 * BLOCK_Q * (D + 4) + bk * (BLOCK_Q + 4) + 2 * BLOCK_Q)


def _flash_kernel_dkdv(D, atomic, rows=4):
    return f"attention_bwd_dkdv<{D}, {'true' if atomic else 'false'}, {rows}>"


def _flash_kernel_fwd(D, rows, asynchronous):
    return f"attention_fwd_flash<{D}, {rows}, {'true' if asynchronous else 'false'}>"


def _flash_forward(be, q, k, v, kv_lens, causal, scale, o, lse, rows=4, asynchronous=False):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    nq = -(-Lq // (16 * rows))
    be.launch(Launch(SOURCE, _flash_kernel_fwd(D, rows, asynchronous), (nq * B * H, 1, 1), (THREADS, 1, 1),
                     (q, k, v, kv_lens, o, lse, np.int32(H), np.int32(Lq), np.int32(Lk),
                      np.int32(nq), np.int32(causal), np.float32(scale * LOG2E)),
                     _flash_smem_fwd(D, rows, 2 if asynchronous else 1)))


def _flash_forward_r8(be, *args):
    _flash_forward(be, *args, rows=8)


def _flash_forward_r8_async(be, *args):
    _flash_forward(be, *args, rows=8, asynchronous=True)


def _bwd_preprocess(be, do, o):
    """D_i = rowsum(dO_i * O_i), float32 (B*H*Lq,): one warp per row."""
    import cupy

    B, H, Lq, D = o.shape
    rows = B * H * Lq
    d_rows = cupy.get_array_module(o).empty((rows,), dtype=np.float32)  # NumPy under the emulator
    warps_per_block = 8
    be.launch(Launch(SOURCE, "attention_bwd_preprocess", (-(-rows // warps_per_block), 1, 1),
                     (32 * warps_per_block, 1, 1), (do, o, d_rows, np.int32(rows), np.int32(D))))
    return d_rows


def _flash_backward(be, do, q, k, v, o, lse, kv_lens, causal, scale, dq, dk, dv,
                    deterministic=False, rows=4):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    d_rows = _bwd_preprocess(be, do, o)
    nk = -(-Lk // (16 * rows))
    nq = -(-Lq // BLOCK_Q)
    common = (np.int32(H), np.int32(Lq), np.int32(Lk), np.int32(causal), np.float32(scale))
    if deterministic:
        be.launch(Launch(SOURCE, _flash_kernel_dkdv(D, False), (nk * B * H, 1, 1),
                         (THREADS, 1, 1),
                         (q, k, v, do, lse, d_rows, kv_lens, dk, dv, dq, *common, np.int32(nk)),
                         _flash_smem_bwd(D)))
        be.launch(Launch(SOURCE, f"attention_bwd_dq<{D}>", (nq * B * H, 1, 1), (THREADS, 1, 1),
                         (q, k, v, do, lse, d_rows, kv_lens, dq, *common, np.int32(nq)),
                         _flash_smem_bwd(D)))
    else:
        # dq accumulates by atomicAdd from every key block's CTA, so it starts at zero.
        dq.fill(0)
        be.launch(Launch(SOURCE, _flash_kernel_dkdv(D, True, rows), (nk * B * H, 1, 1),
                         (THREADS, 1, 1),
                         (q, k, v, do, lse, d_rows, kv_lens, dk, dv, dq, *common, np.int32(nk)),
                         _flash_smem_bwd(D, rows)))


def _flash_backward_det(be, *args):
    _flash_backward(be, *args, deterministic=True)


def _flash_backward_r8(be, *args):
    _flash_backward(be, *args, rows=8)


FLASH_R8_BWD_HEAD_DIMS = (32, 64)


def _flash_r8_bwd_supports(dtype, head_dim, **_):
    if head_dim not in FLASH_R8_BWD_HEAD_DIMS:
        return (f"head_dim {head_dim} is not one of {FLASH_R8_BWD_HEAD_DIMS}: at 8 keys per thread "
                f"dK and dV alone take 2 x 8 x head_dim/16 registers, and 128-key K_j/V_j tiles "
                f"take 232 KB of shared memory at head_dim 128")
    return None


# Naive: composed from this project's matmul and softmax; S and P (B*H, Lq, Lk) materialized.

def _naive_mask(be, s, kv_lens, H, causal, scale, mode):
    """mode 0: s = scale * s with hidden keys -inf, rows with no key all 0 (so softmax stays
    finite); mode 1: p with rows that see no key zeroed (their P is exactly 0)."""
    BH, Lq, Lk = s.shape
    rows = BH * Lq
    # One CTA per row, grid-stride past 2**20 rows (a row costs Lk / 128 loads per thread).
    be.launch(Launch(SOURCE, "attention_naive_mask", (min(rows, 1 << 20), 1, 1), (128, 1, 1),
                     (s, kv_lens, np.int32(H), np.int32(Lq), np.int32(Lk), np.int32(causal),
                      np.float32(scale), np.int32(mode), np.int32(rows))))


def _naive_lse(be, s, kv_lens, H, causal, lse):
    BH, Lq, Lk = s.shape
    be.launch(Launch(SOURCE, "attention_naive_lse", (-(-(BH * Lq) // 8), 1, 1), (256, 1, 1),
                     (s, kv_lens, lse, np.int32(H), np.int32(Lq), np.int32(Lk), np.int32(causal),
                      np.int32(BH * Lq))))


def _naive_probs(be, q, k, kv_lens, causal, scale, lse=None):
    from . import matmul, softmax

    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    q3, k3 = q.reshape(B * H, Lq, D), k.reshape(B * H, Lk, D)
    s = matmul(q3, k3, trans_b=True, backend=be.name)                    # (BH, Lq, Lk)
    _naive_mask(be, s, kv_lens, H, causal, scale, 0)
    if lse is not None:
        _naive_lse(be, s, kv_lens, H, causal, lse)
    p = softmax(s.reshape(B * H * Lq, Lk), backend=be.name).reshape(B * H, Lq, Lk)
    _naive_mask(be, p, kv_lens, H, causal, scale, 1)
    return p


def _naive_forward(be, q, k, v, kv_lens, causal, scale, o, lse):
    from . import matmul

    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    p = _naive_probs(be, q, k, kv_lens, causal, scale, lse)
    matmul(p, v.reshape(B * H, Lk, D), backend=be.name, out=o.reshape(B * H, Lq, D))


def _naive_backward(be, do, q, k, v, o, lse, kv_lens, causal, scale, dq, dk, dv):
    from . import matmul, softmax_backward

    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    BH = B * H
    q3, k3, v3, do3 = (x.reshape(BH, -1, D) for x in (q, k, v, do))
    # P recomputed exactly as the forward computed it (the same kernels, the same order).
    p = _naive_probs(be, q, k, kv_lens, causal, scale)
    matmul(p, do3, trans_a=True, backend=be.name, out=dv.reshape(BH, Lk, D))    # dV = P^T dO
    dp = matmul(do3, v3, trans_b=True, backend=be.name)                          # dP = dO V^T
    ds = softmax_backward(dp.reshape(BH * Lq, Lk), p.reshape(BH * Lq, Lk), backend=be.name)
    ds = ds.reshape(BH, Lq, Lk)
    _naive_mask(be, ds, kv_lens, H, causal, scale, 2)                            # dS *= scale
    matmul(ds, k3, backend=be.name, out=dq.reshape(BH, Lq, D))                   # dQ = scale dS K
    matmul(ds, q3, trans_a=True, backend=be.name, out=dk.reshape(BH, Lk, D))     # dK = scale dS^T Q


MATMUL_BATCH_MAX = 65535  # tfm_kernels.matmul walks its batch with gridDim.z


def _naive_supports(dtype, seqlen_q, seqlen_k, batch, heads, **_):
    n = batch * heads * seqlen_q * seqlen_k
    if n > _validate.INDEX_MAX:
        return (f"the score matrix B*H*Lq*Lk = {n} elements overflows 32-bit indexing; use a "
                f"flash variant")
    if batch * heads > MATMUL_BATCH_MAX:
        return (f"B*H = {batch * heads} exceeds the batched matmul's limit of {MATMUL_BATCH_MAX}; "
                f"use a flash variant")
    return None


_FLASH_KERNELS_FWD = tuple((SOURCE, _flash_kernel_fwd(d, 4, False)) for d in FLASH_HEAD_DIMS)
_FLASH_KERNELS_FWD_R8 = tuple((SOURCE, _flash_kernel_fwd(d, 8, False)) for d in FLASH_HEAD_DIMS)
_FLASH_KERNELS_FWD_R8_ASYNC = tuple((SOURCE, _flash_kernel_fwd(d, 8, True)) for d in FLASH_HEAD_DIMS)
_FLASH_KERNELS_BWD = (((SOURCE, "attention_bwd_preprocess"),)
                      + tuple((SOURCE, _flash_kernel_dkdv(d, True)) for d in FLASH_HEAD_DIMS))
_FLASH_KERNELS_BWD_DET = (((SOURCE, "attention_bwd_preprocess"),)
                          + tuple((SOURCE, _flash_kernel_dkdv(d, False)) for d in FLASH_HEAD_DIMS)
                          + tuple((SOURCE, f"attention_bwd_dq<{d}>") for d in FLASH_HEAD_DIMS))
_FLASH_KERNELS_BWD_R8 = (((SOURCE, "attention_bwd_preprocess"),)
                         + tuple((SOURCE, _flash_kernel_dkdv(d, True, 8)) for d in FLASH_R8_BWD_HEAD_DIMS))
_NAIVE_KERNELS = ((SOURCE, "attention_naive_mask"), (SOURCE, "attention_naive_lse"))
_RUN1 = "H200, tfm-kernels bench --quick (GPU run 1): "

register(Variant(
    "attention_forward", 1, "naive",
    "this project's matmul for S = Q K^T and O = P V, its softmax for P; S materialized "
    "(B*H*Lq*Lk floats), masking and lse by two small kernels",
    _naive_forward, dtypes=("float32",), supports=_naive_supports, kernels=_NAIVE_KERNELS,
    measured=_RUN1 + "25.8 TFLOP/s fwd D=128 N=2048 B=8 H=16 (0.57x SDPA efficient, 0.90x SDPA math); "
    + RUN1_CODE))
register(Variant(
    "attention_forward", 2, "flash",
    "fp32 FlashAttention-2: K_j/V_j tiles in shared memory, online softmax in registers, one pass; "
    "no Lq x Lk buffer, causal and kv_lens blocks skipped",
    _flash_forward, dtypes=("float32",), supports=_flash_supports, kernels=_FLASH_KERNELS_FWD,
    hot=True, measured=_RUN1 + "34.6 TFLOP/s fwd D=128 N=2048 B=8 H=16 (0.76x SDPA efficient 45.4, "
    "1.21x SDPA math); " + RUN1_CODE))
_NEVER_RUN = ("never run on a GPU: added after GPU run 1 (H200, 2026-11-29); compiled, ptxas-checked, "
              "and its source passes the host emulation (tests/test_attention_emulation.py) only")
register(Variant(
    "attention_forward", 3, "flash_r8",
    "as 2_flash with 128-row query blocks and 8 rows per thread: ~1.4x fewer shared-memory loads "
    "per FMA (2_flash's limit), one CTA per SM (opt-in until measured faster: variant=3)",
    _flash_forward_r8, dtypes=("float32",), supports=_flash_supports, kernels=_FLASH_KERNELS_FWD_R8,
    hot=True, extra={"opt_in": True, "unverified": _NEVER_RUN}))
register(Variant(
    "attention_forward", 4, "flash_r8_async",
    "as 3_flash_r8, with K_j/V_j double-buffered by cp.async: tile j+1 streams in while tile j "
    "computes, so the one CTA per SM no longer stalls on each load (opt-in until measured: variant=4)",
    _flash_forward_r8_async, dtypes=("float32",), supports=_flash_supports,
    kernels=_FLASH_KERNELS_FWD_R8_ASYNC, hot=True, extra={"opt_in": True, "unverified": _NEVER_RUN}))
register(Variant(
    "attention_backward", 1, "naive",
    "matmul + softmax recompute P, dV = P^T dO, dP = dO V^T, softmax_backward for dS, "
    "dQ = scale dS K, dK = scale dS^T Q; S, P, dP, dS materialized",
    _naive_backward, dtypes=("float32",), supports=_naive_supports, kernels=_NAIVE_KERNELS,
    measured=_RUN1 + "8.9 TFLOP/s fwd+bwd D=64 N=1024 B=16 H=16 causal (0.30x SDPA efficient); "
    + RUN1_CODE))
register(Variant(
    "attention_backward", 2, "flash",
    "fp32 FlashAttention-2 backward: CTA per key block, P from lse, dK_j/dV_j in registers, "
    "dQ by float atomicAdd (summation order varies run to run)",
    _flash_backward, dtypes=("float32",), supports=_flash_supports, kernels=_FLASH_KERNELS_BWD,
    hot=True, measured=_RUN1 + "28.9 TFLOP/s fwd+bwd D=64 N=1024 B=16 H=16 causal (0.97x SDPA "
    "efficient 29.6); since then P is re-read from shared memory (441a21a, no spills): 4 of its 5 "
    "kernels differ from run 1's and have passed CPU emulation only"))
register(Variant(
    "attention_backward", 3, "flash_det",
    "as 2_flash, but dQ by a second kernel per query block walking key blocks in order: no float "
    "atomics, bitwise reproducible (opt-in: variant=3)",
    _flash_backward_det, dtypes=("float32",), supports=_flash_supports,
    kernels=_FLASH_KERNELS_BWD_DET, hot=True, extra={"opt_in": True},
    measured=_RUN1 + "23.4 TFLOP/s fwd+bwd D=64 N=1024 B=16 H=16 causal (0.79x SDPA efficient); "
    "since then P is re-read from shared memory (441a21a): 8 of its 9 kernels differ from run 1's"))
register(Variant(
    "attention_backward", 4, "flash_r8",
    "as 2_flash with 128-key blocks and 8 keys per thread (head dims 32, 64): ~1.25x fewer shared "
    "loads per FMA, one CTA per SM (opt-in until measured faster: variant=4)",
    _flash_backward_r8, dtypes=("float32",), supports=_flash_r8_bwd_supports,
    kernels=_FLASH_KERNELS_BWD_R8, hot=True, extra={"opt_in": True, "unverified": _NEVER_RUN}))


# --------------------------------------------------------------------------------------------------
# tfm-kernels check (the protocol in tfm_kernels/check.py)

# B, H, Lq, Lk, D, causal, kv_lens. The first is what compute-sanitizer runs (scripts/
# sanitize_cases.py takes one case per op): small, but with edge tiles on both axes, causal with
# Lq > Lk, and kv_lens of 1 and mid-tile.
_CHECK_QUICK = [
    (2, 2, 97, 70, 64, True, (70, 1)),
    (2, 1, 200, 1, 32, False, (1, 0)),
    (1, 2, 17, 257, 128, True, None),
    (1, 1, 130, 130, 96, False, (129,)),
]
_CHECK_FULL = _CHECK_QUICK + [
    (1, 1, 1, 1, 64, False, None),
    (1, 2, 1025, 1025, 128, True, None),
    (2, 1, 1025, 64, 64, False, (64, 17)),
    (1, 1, 64, 1025, 32, True, (1000,)),
    (3, 2, 200, 97, 96, True, (0, 1, 97)),
    (64, 48, 33, 17, 64, False, None),
]


def grad_term_scales(do, q, k, v, o, lse, causal=False, kv_lens=None, scale=None):
    """(dq, dk, dv) magnitudes of the sums the backward computes, taken in absolute value (float64,
    NumPy): max of scale |dS| |K|, scale |dS|^T |Q|, P^T |dO| with |dS| <= P (|dP| + |D|).

    The gradients' tolerance is relative to these, not to max |dq|: dS = P (dP - D) cancels (a row
    with one visible key has dS = 0 exactly, while the kernel's dP and D = rowsum(dO * O), each
    rounded in fp32, differ by ~1e-7), so the largest output can be far below the terms summed to
    make it. This is the usual forward error bound of a sum, |error| <= eps * sum |terms|."""
    q, k, v, do, o, lse = (np.asarray(x, np.float64) for x in (q, k, v, do, o, lse))
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    Lq, Lk = q.shape[2], k.shape[2]
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    vis = np.ones((1, 1, Lq, Lk), bool)
    if causal:
        vis = vis & (np.arange(Lk)[None, :] <= np.arange(Lq)[:, None])
    if kv_lens is not None:
        vis = vis & (np.arange(Lk)[None, None, None, :] < np.asarray(kv_lens)[:, None, None, None])
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.where(vis & np.isfinite(lse)[..., None], np.exp(s - np.where(np.isfinite(lse), lse, 0)[..., None]),
                     0.0)
    ds = p * (np.abs(np.matmul(do, np.swapaxes(v, -1, -2))) + np.abs(np.sum(do * o, -1, keepdims=True)))
    dq = scale * np.matmul(ds, np.abs(k))
    dk = scale * np.matmul(np.swapaxes(ds, -1, -2), np.abs(q))
    dv = np.matmul(np.swapaxes(p, -1, -2), np.abs(do))
    return tuple(float(np.max(x, initial=0.0)) for x in (dq, dk, dv))


def grad_rule(term_scale: float, reduction: int = 1, rtol: float = 1e-5):
    """check.py's tolerance-rule shape: max |out - ref| <= rtol * sqrt(reduction) * term_scale."""
    from .check import errors

    def rule(out, ref):
        mx, _, _ = errors(out, ref)
        tol = rtol * max(1.0, math.sqrt(reduction)) * max(term_scale, 1e-30) + 1e-30
        return mx <= tol, mx, tol
    return rule


def _check_reference(q, k, v, causal, kvl):
    """One ``tfm-kernels check`` shape (fp32 here, fp16 in attention_tc): kv_lens as an array (or
    None), numpy_ref's forward in float64 of the case's inputs, and the case's tag."""
    import numpy_ref

    B, H, Lq, D = q.shape
    kv_lens = None if kvl is None else np.array(kvl)
    o_ref, lse_ref = numpy_ref.attention_forward(*(x.astype(np.float64) for x in (q, k, v)), causal=causal,
                                                 kv_lens=kv_lens)
    tag = (f"{'fp16' if q.dtype == np.float16 else 'fp32'} B{B} H{H} Lq{Lq} Lk{k.shape[2]} D{D}"
           + (" causal" if causal else "") + ("" if kvl is None else f" kv_lens {list(kvl)}"))
    return kv_lens, o_ref, lse_ref, tag


def _check_pair(tag, q, k, v, do, o, lse, causal, kv_lens, ref_f, tol_f, tol_b):
    """The forward and backward Cases of one shape. Outputs are NaN-poisoned, in q's dtype (lse
    float32); the backward runs on (do, q, k, v, o, lse), o and lse the reference's forward rounded
    to the kernels' precision, and is checked against numpy_ref's backward of those in float64."""
    import numpy_ref

    from .check import Case

    def run_f(backend, variant):
        import cupy

        out = (cupy.full(q.shape, np.nan, q.dtype), cupy.full(q.shape[:3], np.nan, np.float32))
        return attention_forward(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), causal, kv_lens,
                                 backend=backend, variant=variant, out=out)

    def run_b(backend, variant):
        import cupy

        out = tuple(cupy.full(x.shape, np.nan, q.dtype) for x in (q, k, v))
        return attention_backward(*(cupy.asarray(x) for x in (do, q, k, v, o, lse)), causal, kv_lens,
                                  backend=backend, variant=variant, out=out)

    def ref_b():
        return numpy_ref.attention_backward(*(x.astype(np.float64) for x in (do, q, k, v, o, lse)), causal=causal,
                                            kv_lens=kv_lens)

    return (Case("attention_forward", tag, run_f, ref_f, tol_f),
            Case("attention_backward", tag, run_b, ref_b, tol_b))


def check_cases(rng, quick: bool):
    """fp32 forward and backward cases against numpy_ref in float64 (fp16 cases: attention_tc)."""
    from .check import fp32_rule

    for B, H, Lq, Lk, D, causal, kvl in (_CHECK_QUICK if quick else _CHECK_FULL):
        q = (1.5 * rng.standard_normal((B, H, Lq, D))).astype(np.float32)
        k = rng.standard_normal((B, H, Lk, D)).astype(np.float32)
        v = rng.standard_normal((B, H, Lk, D)).astype(np.float32)
        do = rng.standard_normal((B, H, Lq, D)).astype(np.float32)
        kv_lens, o_ref, lse_ref, tag = _check_reference(q, k, v, causal, kvl)
        o32, lse32 = o_ref.astype(np.float32), lse_ref.astype(np.float32)
        # Tolerances: tests/test_attention.py's module docstring (1e-5; gradients relative to the
        # magnitude of their terms, grad_term_scales, times sqrt of their sum's length in tiles).
        tol_f = (fp32_rule(rtol=1e-5), fp32_rule(rtol=1e-5))
        terms = grad_term_scales(do, q, k, v, o32, lse32, causal, kv_lens)
        tol_b = tuple(grad_rule(t, max(1, L // BLOCK_Q)) for t, L in zip(terms, (Lk, Lq, Lq)))
        yield from _check_pair(tag, q, k, v, do, o32, lse32, causal, kv_lens, (o_ref, lse_ref), tol_f, tol_b)
