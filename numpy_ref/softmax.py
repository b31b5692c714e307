"""softmax and log-softmax over the last axis: the reference for csrc/softmax*.cu (op `softmax`).

    y_i  = exp(x_i - m) / sum_j exp(x_j - m),   m = max_j x_j   (max-subtracted: never overflows)
    dx_i = y_i * (dy_i - sum_j dy_j * y_j)                      (softmax_backward)
    log-softmax:  y_i = x_i - m - log(sum_j exp(x_j - m)),  dx_i = dy_i - exp(y_i) * sum_j dy_j

Convention (used by every op in numpy_ref): `X_forward(...) -> (out, cache)` and
`X_backward(dout, cache) -> grads`. For both softmaxes the cache *is* the output y, so
`softmax_backward(dy, y)` is at once the kernel-facing signature and the convention.
`softmax(x)` / `log_softmax(x)` return the output alone.

Masked entries (-inf): an entry equal to -inf gets y = 0 exactly (log-softmax: -inf) and zero
gradient. A row that is entirely -inf (a query that sees no key) gives y = 0 everywhere (log-softmax:
-inf everywhere) and zero gradient; never NaN. torch gives NaN for such a row; attention_forward
follows the same rule as here (o = 0, lse = -inf). +inf and NaN inputs are not masks: they
propagate NaN, as in torch.

Dtype: computed in the input's dtype (float16 in, float16 out). Every elementwise step (subtract,
exp, divide) rounds to that dtype; the row sum is np.sum, pairwise, which for float16 accumulates in
float32 and rounds once. float64 is the reference; float16/float32 results are the same-precision
baselines the kernel tests compare against (a kernel that keeps fp32 intermediates should cast its
baseline's input to float32).
"""

from __future__ import annotations

import numpy as np

from . import _check


def _shift_and_sum(x: np.ndarray):
    """(x - m_safe, sum exp(x - m_safe)) with m_safe = 0 on all -inf rows, so -inf - (-inf) never
    makes a NaN: exp(-inf - 0) = 0 and the row sum is exactly 0 there."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(m == -np.inf, np.zeros((), x.dtype), m)
    z = x - m
    s = np.sum(np.exp(z), axis=-1, keepdims=True)
    return z, s


def _float_nonscalar(x, name):
    x = _check.float_array(x, name)
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension (softmax is over the last axis), got a scalar")
    return x


def softmax(x):
    """Softmax over the last axis of a float array (any rank >= 1); all -inf rows give 0."""
    x = _float_nonscalar(x, "x")
    if x.shape[-1] == 0:
        return np.empty_like(x)
    z, s = _shift_and_sum(x)
    # s == 0 only on all -inf rows, where exp(z) is all zeros: divide by 1 to give exact zeros.
    return np.exp(z) / np.where(s == 0, np.ones((), x.dtype), s)


def softmax_forward(x):
    """(y, cache) with cache = y (all softmax_backward needs)."""
    y = softmax(x)
    return y, y


def softmax_backward(dy, y):
    """dx = y * (dy - sum(dy * y)) over the last axis. Masked entries (y = 0) get exactly 0."""
    y = _float_nonscalar(y, "y")
    dy = _float_nonscalar(dy, "dy")
    _check.same_shape(dy, "dy", y.shape)
    _check.same_dtype(dy, "dy", y.dtype, "y")
    return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))


def log_softmax(x):
    """log(softmax(x)) over the last axis, computed without forming softmax; -inf entries stay -inf."""
    x = _float_nonscalar(x, "x")
    if x.shape[-1] == 0:
        return np.empty_like(x)
    z, s = _shift_and_sum(x)
    # All -inf row: s = 0 and z = -inf; z - log(s) would be -inf - (-inf) = NaN, so that row is set
    # to -inf everywhere (the log of its all-zero softmax) by subtracting log(1) = 0 instead.
    return np.where(s == 0, np.asarray(-np.inf, x.dtype), z - np.log(np.where(s == 0, np.ones((), x.dtype), s)))


def log_softmax_forward(x):
    """(y, cache) with cache = y."""
    y = log_softmax(x)
    return y, y


def log_softmax_backward(dy, y):
    """dx = dy - exp(y) * sum(dy) over the last axis, with dy taken as 0 where y = -inf: a masked
    output is the constant -inf whatever the logits, so its dy reaches nothing and its own dx is 0
    (whole masked rows included: a mask is a constant, nothing flows through it)."""
    y = _float_nonscalar(y, "y")
    dy = _float_nonscalar(dy, "dy")
    _check.same_shape(dy, "dy", y.shape)
    _check.same_dtype(dy, "dy", y.dtype, "y")
    dy = np.where(y == -np.inf, np.zeros((), y.dtype), dy)
    return dy - np.exp(y) * np.sum(dy, axis=-1, keepdims=True)
