"""Token embedding, torch's nn.Embedding semantics.

    embedding_forward(ids, weight, padding_idx=None) -> (out, cache)   ids (...) ints, out (..., E)
    embedding_backward(dout, cache) -> dweight                          (V, E); row padding_idx is 0

Ids outside [0, V) raise ValueError (torch raises IndexError; NumPy would silently wrap negative ids).
The padding row receives no gradient, as in torch (its value is whatever the weight holds: torch
zeroes it at initialization, and so does numpy_ref.Transformer).
"""

from __future__ import annotations

import numpy as np

from . import _check


def check_ids(ids, name: str, vocab_size: int, ndim=None) -> np.ndarray:
    ids = _check.int_array(ids, name, ndim=ndim)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}), got {bad[:8].tolist()}"
                         f"{' ...' if bad.size > 8 else ''}")
    return ids


def check_padding_idx(padding_idx, vocab_size: int, name: str = "padding_idx"):
    if padding_idx is None:
        return None
    v = _check.positive_int(padding_idx, name, allow_zero=True)
    if v >= vocab_size:
        raise ValueError(f"{name} must be in [0, {vocab_size}), got {v}")
    return v


def embedding_forward(ids, weight, padding_idx=None):
    weight = _check.float_array(weight, "weight", ndim=2)
    ids = check_ids(ids, "ids", weight.shape[0])
    padding_idx = check_padding_idx(padding_idx, weight.shape[0])
    return weight[ids], (ids, weight.shape, weight.dtype, padding_idx)


def embedding_backward(dout, cache):
    ids, wshape, dtype, padding_idx = cache
    dout = _check.float_array(dout, "dout")
    _check.same_dtype(dout, "dout", dtype, "weight")
    _check.same_shape(dout, "dout", ids.shape + (wshape[1],))
    dweight = np.zeros(wshape, dtype=dtype)
    # Scatter-add: repeated ids accumulate (np.add.at is unbuffered, unlike dweight[ids] += dout).
    np.add.at(dweight, ids.reshape(-1), dout.reshape(-1, wshape[1]))
    if padding_idx is not None:
        dweight[padding_idx] = 0
    return dweight
