"""Multi-head attention with torch's nn.MultiheadAttention parameters (batch_first=True):

    in_proj_weight (3E, E), in_proj_bias (3E,)  packed [W_q; W_k; W_v] and [b_q; b_k; b_v]
    out_proj.weight (E, E), out_proj.bias (E,)

    multi_head_attention_forward(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight,
        out_proj_bias, num_heads, key_padding_mask=None, causal=False, dropout_p=0.0, rng=None,
        training=True) -> (out, cache)
        query (N, L, E), key and value (N, S, E) -> out (N, L, E)
        key_padding_mask (N, S) bool, True = padding (torch's convention): that key is hidden
        causal: query i sees keys j <= i (torch's square subsequent mask, top-left aligned)
        dropout on the attention probabilities (torch's dropout inside MHA), when training and p > 0
    multi_head_attention_backward(dout, cache) -> (dquery, dkey, dvalue, dparams)
        dparams: {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}

The heads are a reshape: (N, L, E) -> (N, H, L, E/H), all heads in one batched matmul (no loops).
The scores, masking and softmax go through attention.masked_softmax_scores, the same code as
numpy_ref.attention_forward. Padding masks need not be suffixes, so they become a visibility mask
here rather than kv_lens.

Self- and cross-attention are recognized by identity, as torch does: when key and value *are* query
(`key is query`), one (N*L, E) x (E, 3E) product makes q, k and v, and the gradient of all three
comes back in dquery (dkey = dvalue = None); when value is key (cross-attention on a memory), k and
v come from one (E, 2E) product and their gradient comes back in dkey (dvalue = None).

A query row whose keys are all padding gives 0 here (torch gives NaN; see attention.py).
"""

from __future__ import annotations

import numpy as np

from . import _check
from .attention import masked_softmax_scores
from .dropout import check_p


def _proj(x, w, b):
    y = x.reshape(-1, x.shape[-1]) @ w.T
    if b is not None:
        y += b
    return y


def _split_heads(y, N, L, parts, H):
    """(N*L, parts*E) -> `parts` arrays (N, H, L, E/H) (views of one transposed array)."""
    y = y.reshape(N, L, parts, H, -1).transpose(2, 0, 3, 1, 4)
    return tuple(y[i] for i in range(parts))


def _merge_heads(*xs):
    """`parts` arrays (N, H, L, hd) -> (N*L, parts*H*hd), in the packed [q | k | v] column order."""
    N, H, L, hd = xs[0].shape
    out = np.empty((N, L, len(xs), H, hd), dtype=xs[0].dtype)
    for i, x in enumerate(xs):
        out[:, :, i] = x.transpose(0, 2, 1, 3)
    return out.reshape(N * L, len(xs) * H * hd)


def multi_head_attention_forward(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight,
                                 out_proj_bias, num_heads, key_padding_mask=None, causal=False,
                                 dropout_p=0.0, rng=None, training=True):
    query = _check.float_array(query, "query", ndim=3)
    dt = query.dtype
    N, L, E = query.shape
    num_heads = _check.positive_int(num_heads, "num_heads")
    if E % num_heads:
        raise ValueError(f"num_heads must divide the embedding size {E}, got {num_heads}")
    mode = "self" if (key is query and value is query) else ("kv" if value is key else "general")
    key = _check.float_array(key, "key", ndim=3)
    value = _check.float_array(value, "value", ndim=3)
    for a, name in ((key, "key"), (value, "value")):
        _check.same_dtype(a, name, dt, "query")
    if key.shape[0] != N or key.shape[2] != E:
        raise ValueError(f"key must have shape (N, S, E) = ({N}, S, {E}) to match query {query.shape}, got {key.shape}")
    S = key.shape[1]
    _check.same_shape(value, "value", key.shape)
    in_proj_weight = _check.float_array(in_proj_weight, "in_proj_weight", ndim=2)
    _check.same_shape(in_proj_weight, "in_proj_weight", (3 * E, E))
    out_proj_weight = _check.float_array(out_proj_weight, "out_proj_weight", ndim=2)
    _check.same_shape(out_proj_weight, "out_proj_weight", (E, E))
    for a, name in ((in_proj_weight, "in_proj_weight"), (out_proj_weight, "out_proj_weight")):
        _check.same_dtype(a, name, dt, "query")
    for b, name, n in ((in_proj_bias, "in_proj_bias", 3 * E), (out_proj_bias, "out_proj_bias", E)):
        if b is not None:
            b = _check.float_array(b, name, ndim=1)
            _check.same_shape(b, name, (n,))
            _check.same_dtype(b, name, dt, "query")
    if key_padding_mask is not None:
        key_padding_mask = _check.bool_array(key_padding_mask, "key_padding_mask", (N, S))
    causal = _check.flag(causal, "causal")
    dropout_p = check_p(dropout_p, "dropout_p")
    training = _check.flag(training, "training")
    drop = training and dropout_p > 0
    if drop and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator when dropout is active, got {type(rng).__name__}")

    H = num_heads
    hd = E // H
    W, bias = in_proj_weight, in_proj_bias
    bq, bk, bv = (None, None, None) if bias is None else (bias[:E], bias[E:2 * E], bias[2 * E:])
    if mode == "self":
        q, k, v = _split_heads(_proj(query, W, bias), N, L, 3, H)
    elif mode == "kv":
        q, = _split_heads(_proj(query, W[:E], bq), N, L, 1, H)
        k, v = _split_heads(_proj(key, W[E:], None if bias is None else bias[E:]), N, S, 2, H)
    else:
        q, = _split_heads(_proj(query, W[:E], bq), N, L, 1, H)
        k, = _split_heads(_proj(key, W[E:2 * E], bk), N, S, 1, H)
        v, = _split_heads(_proj(value, W[2 * E:], bv), N, S, 1, H)

    vis = None
    if causal:
        vis = (np.arange(S)[None, :] <= np.arange(L)[:, None])[None, None]          # (1, 1, L, S)
    if key_padding_mask is not None:
        keys = ~key_padding_mask[:, None, None, :]                                   # (N, 1, 1, S)
        vis = keys if vis is None else vis & keys
    scale = dt.type(1.0 / np.sqrt(hd))
    p, _ = masked_softmax_scores(q, k, vis, scale)                                  # (N, H, L, S)
    keep = None
    pd = p
    if drop:
        keep = (rng.random(p.shape) >= dropout_p).astype(dt) * dt.type(1.0 / (1.0 - dropout_p)) \
            if dropout_p < 1 else np.zeros(p.shape, dt)
        pd = p * keep
    o = np.matmul(pd, v)                                                             # (N, H, L, hd)
    o2 = _merge_heads(o)                                                             # (N*L, E)
    out = _proj(o2.reshape(N, L, E), out_proj_weight, out_proj_bias).reshape(N, L, E)
    cache = (mode, query, key, value, W, bias is not None, out_proj_weight, out_proj_bias is not None,
             q, k, v, p, keep, o, o2, scale)
    return out, cache


def multi_head_attention_backward(dout, cache):
    (mode, query, key, value, W, has_in_bias, Wo, has_out_bias, q, k, v, p, keep, o, o2, scale) = cache
    dout = _check.float_array(dout, "dout", ndim=3)
    _check.same_shape(dout, "dout", query.shape)
    _check.same_dtype(dout, "dout", query.dtype, "query")
    N, L, E = query.shape
    S = key.shape[1]
    H = q.shape[1]
    d2 = dout.reshape(N * L, E)
    grads = {"out_proj.weight": d2.T @ o2, "out_proj.bias": d2.sum(axis=0) if has_out_bias else None}
    do = (d2 @ Wo).reshape(N, L, H, -1).transpose(0, 2, 1, 3)                      # (N, H, L, hd)

    pd = p if keep is None else p * keep
    dv = np.matmul(np.swapaxes(pd, -1, -2), do)
    dp = np.matmul(do, np.swapaxes(v, -1, -2))
    if keep is None:
        # rowsum(P * dP) = rowsum(dO * O): an (L, hd) product instead of an (L, S) one.
        d = np.sum(do * o, axis=-1, keepdims=True)
    else:
        dp *= keep
        d = np.sum(p * dp, axis=-1, keepdims=True)
    ds = p * (dp - d)
    dq = np.matmul(ds, k) * scale
    dk = np.matmul(np.swapaxes(ds, -1, -2), q) * scale

    if mode == "self":
        dqkv = _merge_heads(dq, dk, dv)                                              # (N*L, 3E)
        x2 = query.reshape(N * L, E)
        grads["in_proj_weight"] = dqkv.T @ x2
        grads["in_proj_bias"] = dqkv.sum(axis=0) if has_in_bias else None
        return (dqkv @ W).reshape(N, L, E), None, None, grads
    dq2 = _merge_heads(dq)
    x2 = query.reshape(N * L, E)
    if mode == "kv":
        dkv = _merge_heads(dk, dv)
        m2 = key.reshape(N * S, E)
        grads["in_proj_weight"] = np.concatenate([dq2.T @ x2, dkv.T @ m2])
        grads["in_proj_bias"] = np.concatenate([dq2.sum(0), dkv.sum(0)]) if has_in_bias else None
        return (dq2 @ W[:E]).reshape(N, L, E), (dkv @ W[E:]).reshape(N, S, E), None, grads
    dk2, dv2 = _merge_heads(dk), _merge_heads(dv)
    k2, v2 = key.reshape(N * S, E), value.reshape(N * S, E)
    grads["in_proj_weight"] = np.concatenate([dq2.T @ x2, dk2.T @ k2, dv2.T @ v2])
    grads["in_proj_bias"] = np.concatenate([dq2.sum(0), dk2.sum(0), dv2.sum(0)]) if has_in_bias else None
    return ((dq2 @ W[:E]).reshape(N, L, E), (dk2 @ W[E:2 * E]).reshape(N, S, E),
            (dv2 @ W[2 * E:]).reshape(N, S, E), grads)
