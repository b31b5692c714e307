"""Scaled dot-product attention, forward and backward: the reference for csrc/attention*.cu.

Two statements of the same function:

  attention_forward / attention_backward
      The plain ("math") version: the whole score matrix S (B, H, Lq, Lk) at once. Short, obviously
      right, and checked against torch.nn.functional.scaled_dot_product_attention and against
      finite differences in the tests.

  flash_attention_forward / flash_attention_backward
      The blocked version, written as the CUDA kernels compute it (FlashAttention-2, Dao 2023):
      explicit loops over query blocks Q_i and key blocks K_j/V_j, an online softmax (running max
      m_i, running sum l_i, rescaled accumulator acc) in forward, and in backward the recomputation
      of P_ij from lse with D_i = rowsum(dO_i * O_i). Each block is vectorized over B and H, which
      the kernels spread over the grid. It is tested equal to the plain version for block sizes that
      do and do not divide the lengths. Read it next to the kernel: the names are the same.

Shapes: q (B, H, Lq, D); k, v (B, H, Lk, D); Lq may differ from Lk. Returns o (B, H, Lq, D) and
lse (B, H, Lq) = log sum_j exp(scale * q_i . k_j) over the keys row i sees.

Masks (a key is *visible* to query i of batch b when both hold):
  causal=True        j <= i (top-left aligned, torch's is_causal; with Lq > Lk the last rows see
                     every key, with Lq < Lk the last keys are seen by no one)
  kv_lens (B,) ints  j < kv_lens[b], 0 <= kv_lens[b] <= Lk (key padding at the end of each sequence)
A row that sees no key (kv_lens[b] = 0) gives o = 0 and lse = -inf and contributes zero gradient;
never NaN (torch's SDPA gives NaN there). scale defaults to 1/sqrt(D).

Dtype: q, k, v (and do, o, lse in backward) must share one float dtype; everything is computed in it.
float64 is the reference; float32/float16 results are same-precision baselines.

Backward uses the given o and lse exactly as the kernels do (D = rowsum(do * o), P = exp(S - lse)),
so it is the gradient at (q, k, v) when o and lse are the forward's outputs.
"""

from __future__ import annotations

import numpy as np

from . import _check


# --------------------------------------------------------------------------------------------------
# Validation (one place, before any arithmetic)

def _check_qkv(q, k, v, causal, kv_lens, scale):
    q = _check.float_array(q, "q", ndim=4)
    k = _check.float_array(k, "k", ndim=4)
    v = _check.float_array(v, "v", ndim=4)
    _check.same_dtype(k, "k", q.dtype, "q")
    _check.same_dtype(v, "v", q.dtype, "q")
    B, H, Lq, D = q.shape
    if min(q.shape) == 0:
        raise ValueError(f"q must have no empty dimension, got shape {q.shape}")
    if k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"k must have shape (B, H, Lk, D) = ({B}, {H}, Lk, {D}) to match q {q.shape}, got {k.shape}")
    if k.shape[2] == 0:
        raise ValueError(f"k must have at least one key (Lk >= 1), got shape {k.shape}; use kv_lens = 0 for no keys")
    Lk = k.shape[2]
    _check.same_shape(v, "v", k.shape)
    causal = _check.flag(causal, "causal")
    if kv_lens is not None:
        kv_lens = _check.int_array(kv_lens, "kv_lens", ndim=1)
        if kv_lens.shape != (B,):
            raise ValueError(f"kv_lens must have shape (B,) = ({B},), got {kv_lens.shape}")
        if np.any(kv_lens < 0):
            raise ValueError(f"kv_lens must be >= 0, got {kv_lens.tolist()}")
        if np.any(kv_lens > Lk):
            raise ValueError(f"kv_lens must be <= Lk = {Lk}, got {kv_lens.tolist()}")
        kv_lens = kv_lens.astype(np.int64)
    scale = 1.0 / np.sqrt(D) if scale is None else _check.real(scale, "scale")
    return q, k, v, causal, kv_lens, q.dtype.type(scale)


def _check_backward(do, o, lse, q):
    B, H, Lq, D = q.shape
    do = _check.float_array(do, "do", ndim=4)
    o = _check.float_array(o, "o", ndim=4)
    lse = _check.float_array(lse, "lse", ndim=3)
    for a, name in ((do, "do"), (o, "o"), (lse, "lse")):
        _check.same_dtype(a, name, q.dtype, "q")
    _check.same_shape(do, "do", q.shape)
    _check.same_shape(o, "o", q.shape)
    _check.same_shape(lse, "lse", (B, H, Lq))
    return do, o, lse


def _check_block(x, name):
    return _check.positive_int(x, name)


# --------------------------------------------------------------------------------------------------
# Masks

def _visible(i0, i1, j0, j1, causal, kv_lens):
    """Bool mask of the visible keys of the tile rows [i0, i1) x keys [j0, j1), broadcastable to
    (B, H, i1 - i0, j1 - j0); None when the whole tile is visible (no masking needed)."""
    needs_causal = causal and j1 - 1 > i0          # some key j > query i in the tile
    needs_len = kv_lens is not None and j1 > int(kv_lens.min())
    if not (needs_causal or needs_len):
        return None
    i = np.arange(i0, i1)[:, None]
    j = np.arange(j0, j1)[None, :]
    vis = np.ones((1, 1, i1 - i0, j1 - j0), dtype=bool)
    if needs_causal:
        vis = vis & (j <= i)
    if needs_len:
        vis = vis & (j < kv_lens[:, None, None, None])
    return vis


def _neg_inf_to_pos(lse):
    """lse with -inf replaced by +inf, so exp(S - lse) is exactly 0 on rows that see no key."""
    return np.where(lse == -np.inf, np.asarray(np.inf, lse.dtype), lse)


# --------------------------------------------------------------------------------------------------
# Plain attention

def masked_softmax_scores(q, k, vis, scale):
    """(p, lse): p = softmax over keys of scale * q k^T with hidden keys (vis False) at exactly 0,
    lse its log-sum-exp. vis is a bool array broadcastable to (..., Lq, Lk), or None for none
    hidden. Rows with no visible key: p = 0, lse = -inf. Shared by attention_forward and the
    multi-head attention module (whose key padding masks need not be suffixes). Unvalidated."""
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale                      # (..., Lq, Lk)
    if vis is not None:
        s = np.where(vis, s, np.asarray(-np.inf, q.dtype))
    m = np.max(s, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, np.zeros((), q.dtype), m)                  # no-key rows: shift by 0
    p = np.exp(s - m, out=s)
    l = np.sum(p, axis=-1, keepdims=True)                                 # 0 exactly on no-key rows
    with np.errstate(divide="ignore"):
        lse = (m + np.log(l))[..., 0]                                     # -inf on no-key rows
    p /= np.where(l == 0, np.ones((), q.dtype), l)                       # 0 on no-key rows
    return p, lse


def attention_forward(q, k, v, causal=False, kv_lens=None, scale=None):
    """(o, lse) of softmax(scale * q k^T, masked) v; see the module docstring."""
    q, k, v, causal, kv_lens, scale = _check_qkv(q, k, v, causal, kv_lens, scale)
    Lq, Lk = q.shape[2], k.shape[2]
    p, lse = masked_softmax_scores(q, k, _visible(0, Lq, 0, Lk, causal, kv_lens), scale)
    return np.matmul(p, v), lse


def attention_backward(do, q, k, v, o, lse, causal=False, kv_lens=None, scale=None):
    """(dq, dk, dv) given the forward's o and lse; no-key rows contribute zero gradient."""
    q, k, v, causal, kv_lens, scale = _check_qkv(q, k, v, causal, kv_lens, scale)
    do, o, lse = _check_backward(do, o, lse, q)
    Lq, Lk = q.shape[2], k.shape[2]
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * scale
    p = np.exp(s - _neg_inf_to_pos(lse)[..., None])                        # softmax, recomputed
    vis = _visible(0, Lq, 0, Lk, causal, kv_lens)
    if vis is not None:
        p = np.where(vis, p, np.zeros((), q.dtype))
    dv = np.matmul(np.swapaxes(p, -1, -2), do)
    dp = np.matmul(do, np.swapaxes(v, -1, -2))
    # softmax backward: dS = P * (dP - rowsum(P * dP)), and rowsum(P * dP) = rowsum(dO * O).
    d = np.sum(do * o, axis=-1, keepdims=True)
    ds = p * (dp - d)
    dq = np.matmul(ds, k) * scale
    dk = np.matmul(np.swapaxes(ds, -1, -2), q) * scale
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------
# Blocked ("flash") attention: the algorithm of the CUDA kernels

def flash_attention_forward(q, k, v, causal=False, kv_lens=None, scale=None, block_q=64, block_k=64):
    """FlashAttention-2 forward with an online softmax over key blocks; returns (o, lse) equal to
    attention_forward's. One CUDA thread block owns one (b, h, query block i)."""
    q, k, v, causal, kv_lens, scale = _check_qkv(q, k, v, causal, kv_lens, scale)
    block_q = _check_block(block_q, "block_q")
    block_k = _check_block(block_k, "block_k")
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    dt = q.dtype
    neg_inf, zero = np.asarray(-np.inf, dt), np.zeros((), dt)
    o = np.empty_like(q)
    lse = np.empty((B, H, Lq), dtype=dt)
    for i0 in range(0, Lq, block_q):
        i1 = min(i0 + block_q, Lq)
        Q_i = q[:, :, i0:i1]                                           # (B, H, bq, D), kept on chip
        m_i = np.full((B, H, i1 - i0), -np.inf, dtype=dt)              # running row max
        l_i = np.zeros((B, H, i1 - i0), dtype=dt)                      # running sum of exp(S - m_i)
        acc = np.zeros((B, H, i1 - i0, D), dtype=dt)                   # running sum of exp(S - m_i) V
        # Key blocks past the last visible key are never loaded: with causal, row i1 - 1 sees keys
        # up to i1 - 1, so the loop stops at i1 (about half the tiles for Lq = Lk); with kv_lens it
        # stops at kv_lens[b] (here the max over b: a block past kv_lens[b] but not past the max is
        # fully masked for batch b, which leaves m_i, l_i, acc unchanged, as skipping it would).
        j_end = Lk
        if causal:
            j_end = min(j_end, i1)
        if kv_lens is not None:
            j_end = min(j_end, int(kv_lens.max()))
        for j0 in range(0, j_end, block_k):
            j1 = min(j0 + block_k, Lk)
            K_j, V_j = k[:, :, j0:j1], v[:, :, j0:j1]                  # (B, H, bk, D)
            S_ij = np.matmul(Q_i, np.swapaxes(K_j, -1, -2)) * scale    # (B, H, bq, bk)
            # Only tiles that straddle the diagonal or the kv_lens edge need a mask; the rest run
            # unmasked (the kernels split the loop the same way).
            vis = _visible(i0, i1, j0, j1, causal, kv_lens)
            if vis is not None:
                S_ij = np.where(vis, S_ij, neg_inf)
            m_new = np.maximum(m_i, np.max(S_ij, axis=-1))
            # A row with no visible key so far has m_new = -inf; shifting by 0 instead keeps
            # exp(-inf - (-inf)) = NaN out: its P_ij and alpha are then exactly 0.
            m_safe = np.where(m_new == -np.inf, zero, m_new)
            P_ij = np.exp(S_ij - m_safe[..., None])
            alpha = np.exp(m_i - m_safe)                               # rescale of the old state
            l_i = alpha * l_i + np.sum(P_ij, axis=-1)
            acc = alpha[..., None] * acc + np.matmul(P_ij, V_j)
            m_i = m_new
        # Epilogue: normalize once per row (not once per tile), write O_i and lse_i = m_i + log l_i.
        seen = l_i > 0
        o[:, :, i0:i1] = acc / np.where(seen, l_i, np.ones((), dt))[..., None]
        with np.errstate(divide="ignore", invalid="ignore"):
            lse[:, :, i0:i1] = np.where(seen, m_i + np.log(l_i), neg_inf)
    return o, lse


def flash_attention_backward(do, q, k, v, o, lse, causal=False, kv_lens=None, scale=None,
                             block_q=64, block_k=64):
    """FlashAttention-2 backward; returns (dq, dk, dv) equal to attention_backward's.

    One CUDA thread block owns one (b, h, key block j): it keeps dK_j, dV_j on chip while it walks
    the query blocks i, and adds its share of dQ_i into global memory (atomically in the kernel).
    Nothing of size Lq x Lk is stored: P_ij is recomputed from lse, which is why forward saves it.
    """
    q, k, v, causal, kv_lens, scale = _check_qkv(q, k, v, causal, kv_lens, scale)
    do, o, lse = _check_backward(do, o, lse, q)
    block_q = _check_block(block_q, "block_q")
    block_k = _check_block(block_k, "block_k")
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    dt = q.dtype
    zero = np.zeros((), dt)
    # Preprocessing pass (its own small kernel): D_i = rowsum(dO_i * O_i) = rowsum(P_i * dP_i).
    D_all = np.sum(do * o, axis=-1)                                    # (B, H, Lq)
    lse_safe = _neg_inf_to_pos(lse)                                    # no-key rows: P = 0
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    j_end = Lk if kv_lens is None else int(kv_lens.max())             # keys past every kv_lens: 0
    for j0 in range(0, j_end, block_k):
        j1 = min(j0 + block_k, Lk)
        K_j, V_j = k[:, :, j0:j1], v[:, :, j0:j1]
        dK_j = np.zeros_like(K_j)
        dV_j = np.zeros_like(V_j)
        # With causal, queries i < j0 see none of these keys: start at the query block holding j0.
        i_start = (j0 // block_q) * block_q if causal else 0
        for i0 in range(i_start, Lq, block_q):
            i1 = min(i0 + block_q, Lq)
            Q_i, dO_i = q[:, :, i0:i1], do[:, :, i0:i1]
            lse_i, D_i = lse_safe[:, :, i0:i1], D_all[:, :, i0:i1]
            S_ij = np.matmul(Q_i, np.swapaxes(K_j, -1, -2)) * scale
            P_ij = np.exp(S_ij - lse_i[..., None])                     # softmax, recomputed
            vis = _visible(i0, i1, j0, j1, causal, kv_lens)
            if vis is not None:
                P_ij = np.where(vis, P_ij, zero)
            dV_j += np.matmul(np.swapaxes(P_ij, -1, -2), dO_i)
            dP_ij = np.matmul(dO_i, np.swapaxes(V_j, -1, -2))
            dS_ij = P_ij * (dP_ij - D_i[..., None])
            dq[:, :, i0:i1] += scale * np.matmul(dS_ij, K_j)           # atomicAdd in the kernel
            dK_j += scale * np.matmul(np.swapaxes(dS_ij, -1, -2), Q_i)
        dk[:, :, j0:j1] = dK_j
        dv[:, :, j0:j1] = dV_j
    return dq, dk, dv
