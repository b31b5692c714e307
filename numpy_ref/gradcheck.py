"""Central finite differences: how numpy_ref's backward passes are checked (tests and the demo).

For a scalar loss L(x), the central difference (L(x + eps e_k) - L(x - eps e_k)) / (2 eps) has
truncation error ~ eps^2 |L'''| / 6 and rounding error ~ 1e-16 |L| / eps. With eps = 1e-6 in float64
both are ~1e-10 relative, four orders of magnitude below the 1e-6 the tests demand, so a wrong
backward (typically an O(1) relative error) cannot pass and a right one cannot fail.
"""

from __future__ import annotations

import numpy as np


def numerical_grad(loss, x: np.ndarray, eps: float = 1e-6, index=None) -> np.ndarray:
    """dL/dx by central differences, perturbing `x` in place (restored afterwards).

    loss: a function of no arguments returning a float, reading `x`. index: an iterable of flat
    indices to perturb (the rest of the result stays 0); all of x by default.
    """
    if x.dtype != np.float64:
        raise TypeError(f"x must be float64 for finite differences, got {x.dtype}")
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("x must be contiguous so it can be perturbed in place")
    for t in (range(x.size) if index is None else index):
        old = flat[t]
        flat[t] = old + eps
        up = loss()
        flat[t] = old - eps
        down = loss()
        flat[t] = old
        gflat[t] = (up - down) / (2 * eps)
    return g


def rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |analytic - numeric| / max |numeric| (the gradient's own scale, floor 1e-300)."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"analytic shape {analytic.shape} != numeric shape {numeric.shape}")
    if analytic.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(numeric))), 1e-300)
    return float(np.max(np.abs(analytic - numeric))) / scale
