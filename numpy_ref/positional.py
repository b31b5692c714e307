"""Sinusoidal positional encoding (Vaswani et al. 2017, section 3.5), as in PyTorch's tutorials:

    pe[pos, 2i]     = sin(pos / 10000^(2i / d_model))
    pe[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))

No parameters, so nothing in the state dict and no gradient; the model adds it to the embeddings
(scaled by sqrt(d_model), section 3.4) and the backward of an addition passes dx through.
An odd d_model is allowed: the last column is a sine.
"""

from __future__ import annotations

import numpy as np

from . import _check


def sinusoidal_positional_encoding(length, d_model, dtype=np.float64):
    """(length, d_model) table, computed in float64 and cast once to `dtype`."""
    length = _check.positive_int(length, "length", allow_zero=True)
    d_model = _check.positive_int(d_model, "d_model")
    dtype = np.dtype(dtype)
    if dtype not in _check.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16/float32/float64, got {dtype}")
    pos = np.arange(length, dtype=np.float64)[:, None]
    inv_freq = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-np.log(10000.0) / d_model))
    pe = np.zeros((length, d_model))
    pe[:, 0::2] = np.sin(pos * inv_freq)
    pe[:, 1::2] = np.cos(pos * inv_freq[: d_model // 2])
    return pe.astype(dtype)
