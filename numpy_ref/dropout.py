"""Inverted dropout, torch's semantics: in training each element is kept with probability 1 - p and
scaled by 1 / (1 - p); identity when p = 0 or not training; all zeros when p = 1.

    dropout_forward(x, p, rng=None, training=True) -> (y, cache)   rng: an explicit np.random.Generator
    dropout_backward(dy, cache) -> dx                               (same mask, same scale)

The randomness is explicit (no global state): the same Generator state gives the same mask, which is
what makes a training run reproducible. It cannot reproduce torch's masks (a different generator).
"""

from __future__ import annotations

import numpy as np

from . import _check


def check_p(p, name="p"):
    p = _check.real(p, name)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def dropout_forward(x, p, rng=None, training=True):
    x = _check.float_array(x, "x")
    p = check_p(p)
    training = _check.flag(training, "training")
    if p == 0.0 or not training:
        return x, None
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator when dropout is active (p={p}), got {type(rng).__name__}")
    if p == 1.0:
        scaled_keep = np.zeros(x.shape, dtype=x.dtype)
    else:
        scaled_keep = (rng.random(x.shape) >= p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * scaled_keep, scaled_keep


def dropout_backward(dy, cache):
    dy = _check.float_array(dy, "dy")
    if cache is None:
        return dy
    _check.same_shape(dy, "dy", cache.shape)
    return dy * cache
