"""Argument validation shared by every numpy_ref function: one layer, run before any arithmetic.

Every error names the offending argument, so `matmul(a, b)` with a bad `b` says "b", never "input".
The rules are strict on purpose: a reference that silently broadcasts or casts can agree with a
kernel that has the same bug. No NumPy broadcasting of shapes, no integer/bool/object/complex arrays
where floating point is needed, no float128 (no kernel computes in it).
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def float_array(x, name: str, ndim=None) -> np.ndarray:
    """`x` as an ndarray of float16/32/64 (no copy when it already is one), rank in `ndim`."""
    if isinstance(x, np.ndarray):
        a = x
    else:
        try:
            a = np.asarray(x)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{name} must be a float16/float32/float64 array, could not convert: {e}") from None
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float16/float32/float64 array, got dtype {a.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            want = " or ".join(f"{n}-D" for n in allowed)
            raise ValueError(f"{name} must be {want}, got shape {a.shape}")
    return a


def int_array(x, name: str, ndim=None) -> np.ndarray:
    """`x` as an ndarray of a signed/unsigned integer dtype (bool is refused: it is a mask, not ids)."""
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def bool_array(x, name: str, shape) -> np.ndarray:
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool array (True = padding), got dtype {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


def flag(x, name: str) -> bool:
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return bool(x)


def real(x, name: str, *, positive=False, lo=None, hi=None) -> float:
    """A finite real Python/NumPy scalar (bools refused)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    v = float(x)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")
    return v


def positive_int(x, name: str, *, allow_zero=False) -> int:
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    v = int(x)
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def same_shape(a: np.ndarray, name: str, shape) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")


def same_dtype(a: np.ndarray, name: str, dtype, other: str) -> None:
    if a.dtype != dtype:
        raise TypeError(f"{name} must have the dtype of {other} ({dtype}), got {a.dtype}")


def integer(x, name: str) -> int:
    """Any Python/NumPy integer (negative allowed; bools refused)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    return int(x)


def scalar(x, name: str) -> float:
    """A finite real scalar, also accepting 0-d float arrays (what a loss returns)."""
    if isinstance(x, np.ndarray):
        if x.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got shape {x.shape}")
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a real number, got dtype {x.dtype}")
        x = x.item()
    return real(x, name)
