"""Layer normalization over the last axis, torch's nn.LayerNorm (biased variance, eps inside the sqrt).

    layer_norm_forward(x, weight=None, bias=None, eps=1e-5) -> (y, cache)
        xhat = (x - mean) / sqrt(var + eps),  y = xhat * weight + bias      (weight/bias (E,), optional)
    layer_norm_backward(dy, cache) -> (dx, dweight, dbias)                  (None for absent params)
        g = dy * weight;  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
"""

from __future__ import annotations

import numpy as np

from . import _check


def layer_norm_forward(x, weight=None, bias=None, eps=1e-5):
    x = _check.float_array(x, "x")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last axis to normalize, got shape {x.shape}")
    E = x.shape[-1]
    for p, name in ((weight, "weight"), (bias, "bias")):
        if p is not None:
            p = _check.float_array(p, name, ndim=1)
            _check.same_dtype(p, name, x.dtype, "x")
            _check.same_shape(p, name, (E,))
    eps = _check.real(eps, "eps", positive=True)
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + x.dtype.type(eps))
    xhat = xc * rstd
    y = xhat
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    elif y is xhat:
        y = xhat.copy()
    return y, (xhat, rstd, weight, bias is not None)


def layer_norm_backward(dy, cache):
    xhat, rstd, weight, has_bias = cache
    dy = _check.float_array(dy, "dy")
    _check.same_shape(dy, "dy", xhat.shape)
    _check.same_dtype(dy, "dy", xhat.dtype, "x")
    lead = tuple(range(dy.ndim - 1))
    dweight = np.sum(dy * xhat, axis=lead) if weight is not None else None
    dbias = np.sum(dy, axis=lead) if has_bias else None
    g = dy * weight if weight is not None else dy
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    return dx, dweight, dbias
