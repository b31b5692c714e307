"""Cost formulas: the one place FLOPs and bytes are counted.

Benchmarks, reports and the README all call these, so a throughput figure means the same thing
everywhere. Bytes are the fewest the op must move through device memory (each input read once,
each output written once); FLOPs count a multiply-add as 2.
"""

from __future__ import annotations

import numpy as np


def itemsize(dtype) -> int:
    return np.dtype(dtype).itemsize


def softmax_bytes(rows: int, cols: int, dtype="float32") -> int:
    """Forward: read x, write y."""
    return 2 * rows * cols * itemsize(dtype)


def softmax_backward_bytes(rows: int, cols: int, dtype="float32") -> int:
    """Backward: read y and dy, write dx."""
    return 3 * rows * cols * itemsize(dtype)


def copy_bytes(nbytes: int) -> int:
    """A device-to-device copy of nbytes reads and writes each byte: the bandwidth ceiling."""
    return 2 * nbytes


def matmul_flops(m: int, n: int, k: int, batch: int = 1) -> int:
    return 2 * batch * m * n * k


def matmul_bytes(m: int, n: int, k: int, batch: int = 1, in_dtype="float32", out_dtype=None) -> int:
    out_dtype = in_dtype if out_dtype is None else out_dtype
    return batch * ((m * k + k * n) * itemsize(in_dtype) + m * n * itemsize(out_dtype))


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool = False, mode: str = "fwd") -> float:
    """FlashAttention's benchmark formula: forward 4*B*H*Lq*Lk*D (two matmuls), halved for causal;
    backward 2.5x forward; forward+backward 3.5x forward."""
    f = 4.0 * batch * heads * seqlen_q * seqlen_k * head_dim
    if causal:
        f /= 2
    return f * {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}[mode]


def attention_bytes(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    dtype="float16", mode: str = "fwd") -> int:
    """Fewest bytes: forward reads q, k, v and writes o (+ fp32 lse); backward reads q, k, v, o, do,
    lse and writes dq, dk, dv."""
    s = itemsize(dtype)
    q = batch * heads * seqlen_q * head_dim * s
    kv = batch * heads * seqlen_k * head_dim * s
    lse = batch * heads * seqlen_q * 4
    fwd = 2 * q + 2 * kv + lse
    bwd = 3 * q + 2 * kv + lse + 2 * kv + q
    return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]
