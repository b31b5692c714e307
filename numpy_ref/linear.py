"""Linear layer, torch's convention: y = x @ W.T + b, W (out_features, in_features).

    linear_forward(x, weight, bias=None) -> (y, cache)      x (..., in), y (..., out)
    linear_backward(dy, cache) -> (dx, dweight, dbias)      dbias is None when there is no bias

The three GEMMs are the ones the matmul kernels are benchmarked on: forward x W^T (trans_b), input
gradient dY W, weight gradient dY^T X (trans_a), each over all tokens flattened to one M axis.
"""

from __future__ import annotations

import numpy as np

from . import _check


def linear_forward(x, weight, bias=None):
    x = _check.float_array(x, "x")
    weight = _check.float_array(weight, "weight", ndim=2)
    _check.same_dtype(weight, "weight", x.dtype, "x")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x must end in in_features = weight.shape[1] = {weight.shape[1]}, got shape {x.shape}")
    if bias is not None:
        bias = _check.float_array(bias, "bias", ndim=1)
        _check.same_dtype(bias, "bias", x.dtype, "x")
        _check.same_shape(bias, "bias", (weight.shape[0],))
    x2 = x.reshape(-1, x.shape[-1])
    y = x2 @ weight.T
    if bias is not None:
        y += bias
    return y.reshape(x.shape[:-1] + (weight.shape[0],)), (x, weight, bias is not None)


def linear_backward(dy, cache):
    x, weight, has_bias = cache
    dy = _check.float_array(dy, "dy")
    _check.same_dtype(dy, "dy", x.dtype, "x")
    _check.same_shape(dy, "dy", x.shape[:-1] + (weight.shape[0],))
    dy2 = dy.reshape(-1, weight.shape[0])
    x2 = x.reshape(-1, weight.shape[1])
    dx = (dy2 @ weight).reshape(x.shape)
    dweight = dy2.T @ x2
    dbias = dy2.sum(axis=0) if has_bias else None
    return dx, dweight, dbias
