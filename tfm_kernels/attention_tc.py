"""fp16 attention on tensor cores: variants 10-12 of ``attention_forward`` / ``attention_backward``.

Kernels in ``csrc/attention_tc.cu`` (FlashAttention-2's structure on ``mma.sync`` m16n8k16, with
``ldmatrix`` and ``cp.async`` from ``csrc/mma.cuh``); the API, validation and the variant protocol
are ``tfm_kernels/attention.py``'s (each ``fn`` here receives validated, contiguous CuPy arrays,
``kv_lens`` always an int32 device array, outputs possibly NaN-poisoned and written in full).

    forward   10_tc       fp16 in, fp32 accumulate, fp16 o, fp32 lse. CTA = 64*MW query rows, 4
                          warps x 16*MW rows; Q_i in registers, K_j/V_j double-buffered by cp.async;
                          online softmax on the accumulator fragments, P reused as the A operand
              13_tc_m128  as 10 with 128-row query tiles at every head dim (D = 96/128: Q_i from
                          smem per k-step, 32-key tiles); 1.14x 10 at D = 128 on an H200: the default
              14_wgmma    Hopper (sm_90a, csrc/attention_sm90.cu): wgmma for S and P V, 2 warpgroups
                          x 64 rows, 128-key tiles; head dims 64 and 128; opt-in until seen on a GPU
              15_wgmma_overlap  14 with FA3's intra-warpgroup overlap (P V_{j-1} runs during
                          softmax_j); opt-in likewise
    backward  11_tc       CTA (8 warps) per 128-key block: dK_j, dV_j in registers, P and dS
                          recomputed from lse on tensor cores; dQ by fp32 atomics into a scratch
                          accumulator, then one conversion pass (scale, fp16). GPU run 1 measured the
                          earlier 4-warp, 64-key version; the 128-key one has not run on a GPU yet
              12_tc_det   4 warps per 64-key block for dK_j, dV_j, dQ by a second kernel per query
                          tile (forward-shaped, no atomics): bitwise reproducible, ~1.4x the
                          backward's FLOPs, yet 1.25x faster than 11 (64-key) on an H200 (the
                          atomics cost more): the default
              13_wgmma    Hopper (sm_90a, csrc/attention_sm90.cu): 11's algorithm on warpgroup
                          MMAs, 2 warpgroups per 128-key block, 128-query (D = 64) or 64-query
                          (D = 128) steps; dQ by float2 atomics; head dims 64 and 128; opt-in until
                          a GPU run has seen it
              14_wgmma_det  13 for dK, dV and 12's plan for dQ on warpgroup MMAs: a second kernel per
                          128-row query tile, no atomics, bitwise reproducible; opt-in likewise

Tile shapes per head dim (chosen so ``ptxas -v`` shows no spills at 128 or 256 threads; see
docs/attention_tc.md for the register and shared-memory figures):
"""

from __future__ import annotations

import numpy as np

from ._registry import Launch, Variant, register

SOURCE = "attention_tc.cu"
SOURCE_SM90 = "attention_sm90.cu"   # wgmma, built for sm_90a only
HEAD_DIMS = (32, 64, 96, 128)
THREADS = 128
LOG2E = 1.4426950408889634

# forward: head_dim -> (BN keys per K_j/V_j tile, MW m16 tiles per warp); BM = 64 * MW query rows.
# D <= 64 takes two m16 tiles per warp (BM = 128): twice the mma work per ldmatrix of K_j and V_j;
# at D = 96/128 the fp32 acc (D/2 registers per m16 tile) leaves no room for a second one.
FWD_TILES = {32: (64, 2), 64: (64, 2), 96: (64, 1), 128: (64, 1)}
# forward 13: 128-row query tiles at every head dim. At D = 96/128 that takes Q_i out of the
# registers (re-read from smem each k16 step) and BN = 32 keys (two m16 tiles of fp32 acc are
# 2 x D/2 registers; with BN = 64 ptxas spills); D <= 64 is 10's configuration unchanged.
FWD13_TILES = {32: (64, 2, True), 64: (64, 2, True), 96: (32, 2, False), 128: (32, 2, False)}
# backward (dK/dV kernel): head_dim -> BM query rows per Q_i/dO_i tile. D = 96/128: dK_j and dV_j
# take D registers per thread, so S^T and dP^T get half the queries.
BWD_BM = {32: 64, 64: 64, 96: 32, 128: 32}
# warps per dK/dV CTA (16 keys each): 11 takes FA2's 128-key blocks (8 warps), which halves its
# fp32 dQ atomics (Lq * D per key block) and the Q_i/dO_i loads per key; 12, with no atomics, keeps
# the 4-warp, 64-key blocks it was measured with.
BWD_WARPS = {True: 8, False: 4}
# backward 12's dQ kernel: head_dim -> BN keys per tile (query tile fixed at 64 rows).
DQ_BN = {32: 64, 64: 64, 96: 64, 128: 32}
DQ_BM = 64

__doc__ += "".join(
    f"\n    D = {d:3d}: forward BM x BN = {64 * FWD_TILES[d][1]} x {FWD_TILES[d][0]} (13: "
    f"{64 * FWD13_TILES[d][1]} x {FWD13_TILES[d][0]}), backward "
    f"128 (11) / 64 (12) keys x {BWD_BM[d]} queries, dQ (12) 64 queries x {DQ_BN[d]} keys"
    for d in HEAD_DIMS) + "\n"


def fwd_kernel(D: int, number: int = 10) -> str:
    bn, mw, qreg = FWD13_TILES[D] if number == 13 else (*FWD_TILES[D], True)
    return f"attn_fwd_tc<{D}, {bn}, {mw}, {'true' if qreg else 'false'}>"


def bwd_kernel(D: int, atomic: bool) -> str:
    return f"attn_bwd_tc<{D}, {BWD_BM[D]}, {'true' if atomic else 'false'}, {BWD_WARPS[atomic]}>"


def dq_kernel(D: int) -> str:
    return f"attn_bwd_dq_tc<{D}, {DQ_BN[D]}>"


def fwd_smem(D: int, number: int = 10) -> int:
    """Q_i [BM][D+8] and two buffers each of K_j, V_j [BN][D+8], fp16."""
    bn, mw = FWD13_TILES[D][:2] if number == 13 else FWD_TILES[D]
    return (64 * mw + 4 * bn) * (D + 8) * 2


def bwd_smem(D: int, atomic: bool) -> int:
    """K_j, V_j [BN][D+8]; two buffers each of Q_i, dO_i [BM][D+8]; the dS^T tile [BN][BM+8] (11
    only); two buffers each of lse_i and D_i [BM] fp32. BN = 16 keys per warp."""
    bm, bn = BWD_BM[D], 16 * BWD_WARPS[atomic]
    return ((2 * bn + 4 * bm) * (D + 8) * 2 + (bn * (bm + 8) * 2 if atomic else 0)
            + 4 * bm * 4)


def dq_smem(D: int) -> int:
    """Q_i, dO_i [64][D+8]; two buffers each of K_j, V_j [BN][D+8]."""
    return (2 * DQ_BM + 4 * DQ_BN[D]) * (D + 8) * 2


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _supports(dtype, head_dim, **_):
    if head_dim not in HEAD_DIMS:
        return (f"head_dim {head_dim} is not one of {HEAD_DIMS} (the compiled tensor-core "
                f"instantiations)")
    return None


# ------------------------------------------------------------------------------------------ forward

def _forward(be, q, k, v, kv_lens, causal, scale, o, lse, number=10):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    mw = FWD13_TILES[D][1] if number == 13 else FWD_TILES[D][1]
    ntiles = _cdiv(Lq, 64 * mw)
    be.launch(Launch(SOURCE, fwd_kernel(D, number), (ntiles * B * H, 1, 1), (THREADS, 1, 1),
                     (q, k, v, o, lse, kv_lens, np.int32(H), np.int32(Lq), np.int32(Lk),
                      np.int32(ntiles), np.float32(scale * LOG2E), np.int32(causal)),
                     fwd_smem(D, number)))


def _forward13(be, *args):
    _forward(be, *args, number=13)


# forward 14 (Hopper): 128 query rows (2 warpgroups x 64) x 128-key tiles, head dims 64 and 128.
WGMMA_HEAD_DIMS = (64, 128)
WGMMA_BM, WGMMA_BN = 128, 128


def wgmma_kernel(D: int, overlap: bool = False) -> str:
    return f"attn_fwd_wgmma<{D}, {WGMMA_BN}, {'true' if overlap else 'false'}>"


def wgmma_smem(D: int, overlap: bool = False) -> int:
    """Q_i [128][D], two buffers of K_j and two of V_j (three with 15's overlap: V_{j-1} is still
    read while V_{j+1} streams in) [128][D], fp16, 128-byte swizzled (no padding), plus 1 KiB so the
    kernel can align the swizzle atoms to 1024 bytes."""
    return (WGMMA_BM + (5 if overlap else 4) * WGMMA_BN) * D * 2 + 1024


def _wgmma_supports(dtype, head_dim, **_):
    if head_dim not in WGMMA_HEAD_DIMS:
        return (f"head_dim {head_dim} is not one of {WGMMA_HEAD_DIMS} (the wgmma instantiations: "
                f"m64n{{D}}k16 for P V, dV and dK)")
    return None


def _forward_wgmma(be, q, k, v, kv_lens, causal, scale, o, lse, overlap=False):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    ntiles = _cdiv(Lq, WGMMA_BM)
    be.launch(Launch(SOURCE_SM90, wgmma_kernel(D, overlap), (ntiles * B * H, 1, 1), (256, 1, 1),
                     (q, k, v, o, lse, kv_lens, np.int32(H), np.int32(Lq), np.int32(Lk),
                      np.int32(ntiles), np.float32(scale * LOG2E), np.int32(causal)),
                     wgmma_smem(D, overlap)))


def _forward_wgmma_overlap(be, *args):
    _forward_wgmma(be, *args, overlap=True)


# backward 13 (Hopper): 128-key blocks (2 warpgroups x 64 keys), head dims 64 and 128; query steps
# of 128 rows at D = 64 and 64 at D = 128 (FA3's shapes; csrc/attention_sm90.cu says why).
WGMMA_BWD_BN = 128
WGMMA_BWD_BM = {64: 128, 128: 64}


def wgmma_bwd_kernel(D: int, atomic: bool = True) -> str:
    return f"attn_bwd_wgmma<{D}, {'true' if atomic else 'false'}>"


def wgmma_dq_kernel(D: int) -> str:
    return f"attn_bwd_dq_wgmma<{D}>"


# backward 14's dQ kernel: 128 query rows per CTA, key blocks of 128 (D = 64) or 64 (D = 128).
WGMMA_DQ_BN = {64: 128, 128: 64}


def wgmma_dq_smem(D: int) -> int:
    """Q_i, dO_i [128][D]; two buffers each of K_j, V_j [BN][D]; fp16, 128-byte swizzled; + 1 KiB."""
    return (2 * 128 + 4 * WGMMA_DQ_BN[D]) * D * 2 + 1024


def wgmma_bwd_smem(D: int) -> int:
    """K_j, V_j [128][D]; two buffers each of Q_i, dO_i [BM][D]; dS^T [128][BM], fp16, 128-byte
    swizzled; two buffers each of lse_i, D_i [BM] fp32; plus 1 KiB for the 1024-byte alignment."""
    bn, bm = WGMMA_BWD_BN, WGMMA_BWD_BM[D]
    return (2 * bn * D + 4 * bm * D + bn * bm) * 2 + 4 * bm * 4 + 1024


# ------------------------------------------------------------------------------------------ backward

def _backward(be, do, q, k, v, o, lse, kv_lens, causal, scale, dq, dk, dv, deterministic=False,
              wgmma=False):
    import cupy

    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    rows = B * H * Lq
    xp = cupy.get_array_module(o)                                    # NumPy under the host emulation
    d_rows = xp.empty((rows,), dtype=np.float32)                     # D_i = rowsum(dO_i * O_i)
    # 11 accumulates dQ in fp32 by atomics (fp16 atomics would round every partial sum); the
    # preprocessing pass zeroes it while it reads dO and O anyway. 12 needs no accumulator (the
    # pointer is passed but never touched).
    dq_acc = d_rows if deterministic else xp.empty((B, H, Lq, D), dtype=np.float32)
    be.launch(Launch(SOURCE, f"attn_bwd_dot_tc<{D}>", (_cdiv(rows, 8), 1, 1), (256, 1, 1),
                     (do, o, d_rows, dq_acc, np.int32(rows), np.int32(not deterministic))))
    common = (kv_lens, np.int32(H), np.int32(Lq), np.int32(Lk))
    if wgmma:
        nk = _cdiv(Lk, WGMMA_BWD_BN)
        main = Launch(SOURCE_SM90, wgmma_bwd_kernel(D, not deterministic), (nk * B * H, 1, 1), (256, 1, 1),
                      (q, k, v, do, lse, d_rows, dk, dv, dq_acc, *common, np.int32(nk),
                       np.float32(scale), np.int32(causal)),
                      wgmma_bwd_smem(D))
    else:
        nw = BWD_WARPS[not deterministic]
        nk = _cdiv(Lk, 16 * nw)
        main = Launch(SOURCE, bwd_kernel(D, not deterministic), (nk * B * H, 1, 1), (32 * nw, 1, 1),
                      (q, k, v, do, lse, d_rows, dk, dv, dq_acc, *common, np.int32(nk),
                       np.float32(scale), np.int32(causal)),
                      bwd_smem(D, not deterministic))
    be.launch(main)
    if deterministic and wgmma:
        nq = _cdiv(Lq, 128)
        be.launch(Launch(SOURCE_SM90, wgmma_dq_kernel(D), (nq * B * H, 1, 1), (256, 1, 1),
                         (q, k, v, do, lse, d_rows, dq, *common, np.int32(nq), np.float32(scale),
                          np.int32(causal)),
                         wgmma_dq_smem(D)))
    elif deterministic:
        nq = _cdiv(Lq, DQ_BM)
        be.launch(Launch(SOURCE, dq_kernel(D), (nq * B * H, 1, 1), (THREADS, 1, 1),
                         (q, k, v, do, lse, d_rows, dq, *common, np.int32(nq), np.float32(scale),
                          np.int32(causal)),
                         dq_smem(D)))
    else:
        n4 = rows * D // 4
        be.launch(Launch(SOURCE, "attn_bwd_dq_convert", (min(_cdiv(n4, 256), 132 * 16), 1, 1),
                         (256, 1, 1), (dq_acc, dq, np.int64(n4), np.float32(scale))))


def _backward_det(be, *args):
    _backward(be, *args, deterministic=True)


def _backward_wgmma(be, *args):
    _backward(be, *args, wgmma=True)


def _backward_wgmma_det(be, *args):
    _backward(be, *args, deterministic=True, wgmma=True)


# ------------------------------------------------------------------------------------------ checking

def fp16_baseline(q, k, v, do, o16, lse32, causal, kv_lens, scale):
    """The fp16 tolerance's baseline (FlashAttention's rule): the same computation as the kernels
    from the same fp16 host arrays, in NumPy with fp32 math and fp16 rounding exactly where the
    kernels round (P before P V; dS before dS K and dS^T Q; o, dq, dk, dv on output). Backward takes
    the o16 / lse32 the kernel under test is given. Returns (o, lse, (dq, dk, dv))."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    r16 = lambda x: x.astype(np.float16).astype(np.float32)  # noqa: E731
    i, j = np.arange(Lq)[:, None], np.arange(Lk)[None, :]
    vis = np.ones((B, 1, Lq, Lk), dtype=bool)
    if causal:
        vis = vis & (j <= i)
    if kv_lens is not None:
        vis = vis & (j < np.asarray(kv_lens)[:, None, None, None])
    s = np.matmul(f32(q), np.swapaxes(f32(k), -1, -2)) * np.float32(scale)
    s = np.where(vis, s, np.float32(-np.inf))
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, np.float32(0), m)
    p = np.exp(s - m)
    l = np.sum(p, axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = (m + np.log(l))[..., 0]
    o = (np.matmul(r16(p), f32(v)) / np.where(l == 0, np.float32(1), l)).astype(np.float16)
    lse_safe = np.where(lse32 == -np.inf, np.float32(np.inf), f32(lse32))
    with np.errstate(invalid="ignore"):
        p = np.where(vis, np.exp(s - lse_safe[..., None]), np.float32(0))
    dv = np.matmul(np.swapaxes(r16(p), -1, -2), f32(do)).astype(np.float16)
    dp = np.matmul(f32(do), np.swapaxes(f32(v), -1, -2))
    d_i = np.sum(f32(do) * f32(o16), axis=-1, keepdims=True)
    ds = r16(p * (dp - d_i))
    dq = (np.matmul(ds, f32(k)) * np.float32(scale)).astype(np.float16)
    dk = (np.matmul(np.swapaxes(ds, -1, -2), f32(q)) * np.float32(scale)).astype(np.float16)
    return o, lse, (dq, dk, dv)


# (B, H, Lq, Lk, D, causal, kv_lens): quick = seconds on a GPU, each head dim and mask kind once.
_CHECK_QUICK = [(2, 2, 97, 83, 64, True, (0, 50)), (1, 2, 200, 17, 128, False, None),
                (2, 1, 17, 130, 32, False, (1, 130)), (1, 3, 130, 200, 96, True, None)]
_CHECK_FULL = _CHECK_QUICK + [(2, 2, 1025, 1025, 128, True, None), (3, 2, 97, 200, 96, False, (0, 1, 200)),
                              (1, 4, 1025, 64, 64, True, (64,)), (2, 1, 1, 200, 32, False, (0, 150))]


def check_cases(rng, quick: bool):
    """fp16 forward and backward cases for ``tfm-kernels check`` against numpy_ref in float64, with
    tests/test_attention_tc.py's rule: 2x the fp16_baseline error + 1e-3 x max|ref| (lse: 1e-5)."""
    from .attention import _check_pair, _check_reference
    from .check import lowprec_rule

    for B, H, Lq, Lk, D, causal, kvl in (_CHECK_QUICK if quick else _CHECK_FULL):
        q, do = (rng.standard_normal((B, H, Lq, D)).astype(np.float16) for _ in range(2))
        k, v = (rng.standard_normal((B, H, Lk, D)).astype(np.float16) for _ in range(2))
        kv_lens, o_ref, lse_ref, tag = _check_reference(q, k, v, causal, kvl)
        o16, lse32 = o_ref.astype(np.float16), lse_ref.astype(np.float32)
        b_o, b_lse, b_grads = fp16_baseline(q, k, v, do, o16, lse32, causal, kv_lens, 1.0 / np.sqrt(D))
        yield from _check_pair(tag, q, k, v, do, o16, lse32, causal, kv_lens, (o_ref, lse_ref),
                                   (lowprec_rule(b_o, 1e-3), lowprec_rule(b_lse, 1e-5)),
                                   tuple(lowprec_rule(b, 1e-3) for b in b_grads))


_DOT = tuple((SOURCE, f"attn_bwd_dot_tc<{d}>") for d in HEAD_DIMS)

register(Variant(
    "attention_forward", 10, "tc",
    "fp16 on tensor cores (mma.sync m16n8k16 + ldmatrix): Q_i in registers, K_j/V_j double-buffered "
    "by cp.async, online softmax on the fp32 accumulator fragments, P reused in registers as the "
    "A operand of P V; masks only on edge tiles",
    _forward, dtypes=("float16",), supports=_supports,
    kernels=tuple((SOURCE, fwd_kernel(d)) for d in HEAD_DIMS), hot=True,
    measured="H200 (GPU run 1): fwd D=128 N=4096 B4 H16: 237 TFLOP/s; 0.67x SDPA flash (355)"))
register(Variant(
    "attention_forward", 13, "tc_m128",
    "as 10_tc with 128-row query tiles (2 m16 tiles per warp) at every head dim: at D = 96/128 Q_i "
    "is re-read from smem per k16 step and K_j/V_j tiles are 32 keys, halving K/V smem reads per "
    "FLOP (FA2's D = 128 shape)",
    _forward13, dtypes=("float16",), supports=_supports,
    kernels=tuple((SOURCE, fwd_kernel(d, 13)) for d in HEAD_DIMS), hot=True,
    measured="H200 (GPU run 1): fwd D=128 N=4096 B4 H16: 270 TFLOP/s, 1.14x 10_tc (237); "
             "0.76x SDPA flash (355)"))
register(Variant(
    "attention_forward", 14, "wgmma",
    "Hopper: S = Q K^T by wgmma m64n128k16 from 128-byte-swizzled smem, P V by wgmma with P in "
    "registers (A operand) and V N-major; 2 warpgroups x 64 rows, 128-key tiles double-buffered by "
    "cp.async (opt-in until seen correct and measured on a GPU: variant=14)",
    _forward_wgmma, dtypes=("float16",), supports=_wgmma_supports,
    kernels=tuple((SOURCE_SM90, wgmma_kernel(d)) for d in WGMMA_HEAD_DIMS), hot=True, arch=90,
    extra={"opt_in": True, "unverified": "never run on a GPU: added after GPU run 1 (H200, 2026-11-29); compiled, and its source passes "
                                              "the host emulation (tests/test_attention_emulation.py) only"}))
register(Variant(
    "attention_forward", 15, "wgmma_overlap",
    "as 14_wgmma, with FA3's intra-warpgroup overlap: tile j-1's P V wgmma is issued right after "
    "tile j's S = Q K^T and runs while tile j's softmax is computed (V triple-buffered) (opt-in "
    "until seen correct and measured on a GPU: variant=15)",
    _forward_wgmma_overlap, dtypes=("float16",), supports=_wgmma_supports,
    kernels=tuple((SOURCE_SM90, wgmma_kernel(d, True)) for d in WGMMA_HEAD_DIMS), hot=True, arch=90,
    extra={"opt_in": True, "unverified": "never run on a GPU: written after GPU run 1 (H200, 2026-11-29); "
                                         "compiled (no spills), and its source passes the host emulation "
                                         "(tests/test_attention_emulation.py) only"}))
register(Variant(
    "attention_backward", 11, "tc",
    "fp16 FlashAttention-2 backward on tensor cores: CTA (8 warps) per 128-key block, dK_j/dV_j in "
    "fp32 registers, P and dS recomputed from lse with mma.sync, dQ by fp32 atomics then one fp16 "
    "pass",
    _backward, dtypes=("float16",), supports=_supports,
    kernels=_DOT + tuple((SOURCE, bwd_kernel(d, True)) for d in HEAD_DIMS)
    + ((SOURCE, "attn_bwd_dq_convert"),), hot=True,
    measured="H200 (GPU run 1, with 64-key blocks): fwd+bwd causal D=128 N=4096 B4 H16: 156 TFLOP/s "
             "(0.58x SDPA flash, 269): the fp32 dQ atomics (Lq*D per key block) cost more than 12's "
             "recomputation; 128-key blocks since (not yet measured)"))
register(Variant(
    "attention_backward", 12, "tc_det",
    "as 11_tc, but dQ by a second tensor-core kernel per query tile walking the key blocks in "
    "order: no float atomics, bitwise reproducible, and faster than 11 on an H200 despite ~1.4x FLOPs",
    _backward_det, dtypes=("float16",), supports=_supports,
    kernels=_DOT + tuple((SOURCE, bwd_kernel(d, False)) for d in HEAD_DIMS)
    + tuple((SOURCE, dq_kernel(d)) for d in HEAD_DIMS), hot=True,
    measured="H200 (GPU run 1): fwd+bwd causal D=128 N=4096 B4 H16: 195 TFLOP/s, 1.25x 11_tc; "
             "0.72x SDPA flash (269)"))
register(Variant(
    "attention_backward", 13, "wgmma",
    "Hopper: 11_tc's algorithm on warpgroup MMAs (sm_90a): CTA of 2 warpgroups per 128-key block, "
    "128-query (D = 64) or 64-query (D = 128) steps; S^T, dP^T by wgmma from 128-byte-swizzled smem, dV and dK with P^T and dS^T "
    "from registers, dQ by wgmma from a staged dS^T tile into fp32 float2 atomics (opt-in until "
    "seen correct and measured on a GPU: variant=13)",
    _backward_wgmma, dtypes=("float16",), supports=_wgmma_supports,
    kernels=tuple((SOURCE, f"attn_bwd_dot_tc<{d}>") for d in WGMMA_HEAD_DIMS)
    + tuple((SOURCE_SM90, wgmma_bwd_kernel(d)) for d in WGMMA_HEAD_DIMS)
    + ((SOURCE, "attn_bwd_dq_convert"),), hot=True, arch=90,
    extra={"opt_in": True, "unverified": "never run on a GPU: written after GPU run 1 (H200, 2026-11-29); "
                                         "compiled (no spills), and its source passes the host emulation "
                                         "(tests/test_attention_emulation.py) only"}))
register(Variant(
    "attention_backward", 14, "wgmma_det",
    "as 13_wgmma for dK and dV, and dQ by a second wgmma kernel per 128-row query tile walking the key "
    "blocks in order (12's plan: S and dP recomputed): no float atomics, bitwise reproducible (opt-in "
    "until seen correct and measured on a GPU: variant=14)",
    _backward_wgmma_det, dtypes=("float16",), supports=_wgmma_supports,
    kernels=tuple((SOURCE, f"attn_bwd_dot_tc<{d}>") for d in WGMMA_HEAD_DIMS)
    + tuple((SOURCE_SM90, wgmma_bwd_kernel(d, False)) for d in WGMMA_HEAD_DIMS)
    + tuple((SOURCE_SM90, wgmma_dq_kernel(d)) for d in WGMMA_HEAD_DIMS), hot=True, arch=90,
    extra={"opt_in": True, "unverified": "never run on a GPU: written after GPU run 1 (H200, 2026-11-29); "
                                         "compiled (no spills), and its source passes the host emulation "
                                         "(tests/test_attention_emulation.py) only"}))
