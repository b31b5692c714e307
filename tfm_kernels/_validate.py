"""Argument validation: the one layer every op runs before any launch.

An op's wrapper does three things in order (the Triton tutorials' rule): check the arguments, allocate
the output, launch. This module is the first two:

    x = as_array(x, "x", dtypes=("float32", "float16"), ndim=2)     # CuPy view, zero-copy
    check_int32_indexing("x", *x.shape)                             # kernels index with int32
    out = out_array(out, "out", x.shape, x.dtype)                    # the user's, checked, or new

Accepted inputs: CuPy arrays, any object with ``__cuda_array_interface__`` (Numba, PyTorch) and any
object with ``__dlpack__`` whose ``__dlpack_device__`` is a CUDA device (PyTorch CUDA tensors, JAX).
All are wrapped without a copy. Kernels take dense row-major buffers, so non-contiguous inputs are
refused rather than silently copied (a copy would hide a 2x memory-traffic cost from a benchmark).

Every error names the argument first (``"x: ..."``): TypeError for what the argument *is* (a host
array, a wrong dtype), ValueError for what it *looks like* (ndim, contiguity, device, shape, size).
Metadata is checked before CuPy touches the device, so all of these errors are raised, and can be
tested, on a machine without a GPU; a valid argument on such a machine gives RuntimeError saying
no CUDA device is usable and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

# Kernels compute element offsets in int32 (half the registers of int64 index math, and what the
# hardware's IMAD does in one instruction); 2**31 - 1 elements is the largest tensor they address.
INT32_MAX = 2**31 - 1
# Loop bounds step past the end before they stop (c += blockDim * VEC, k0 += BK, col + 3): up to
# 1024 threads x 16 elements = 16384, or one 256-wide tile. Keeping every element count 2**16 below
# INT32_MAX keeps those int32 steps from wrapping. Found by an audit: M = N = 1, K ~ 2**31 passed a
# plain 2**31 - 1 check and would have wrapped the k-tile count of the cp.async matmul.
INDEX_HEADROOM = 2**16
INDEX_MAX = INT32_MAX - INDEX_HEADROOM

# DLPack device types (dlpack.h: kDLCUDA = 2, kDLCUDAManaged = 13).
_DLPACK_CUDA = (2, 13)


def _describe(x: Any) -> str:
    t = type(x)
    return f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__


def _dtype_name(dt) -> str:
    return np.dtype(dt).name


def _c_contiguous(shape: tuple[int, ...], strides_bytes: tuple[int, ...] | None, itemsize: int) -> bool:
    """Row-major dense; strides of size-1 dimensions are irrelevant (PyTorch reports odd ones)."""
    if strides_bytes is None:
        return True
    expected = itemsize
    for n, s in zip(reversed(shape), reversed(strides_bytes)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _check_meta(name: str, dtype_name: str, shape: tuple[int, ...], contiguous: bool,
                dtypes: Iterable[str], ndim: int | tuple[int, ...] | None,
                want_shape: tuple[int, ...] | None = None) -> None:
    dtypes = tuple(dtypes)
    if dtype_name not in dtypes:
        raise TypeError(f"{name}: expected dtype {' or '.join(dtypes)}, got {dtype_name}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shape) not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got shape {tuple(shape)} "
                             f"({len(shape)} dimensions)")
    if want_shape is not None and tuple(shape) != tuple(want_shape):
        raise ValueError(f"{name}: expected shape {tuple(want_shape)}, got {tuple(shape)}")
    if not contiguous:
        raise ValueError(f"{name}: must be C-contiguous (row-major, dense); got a strided view of "
                         f"shape {tuple(shape)} (call .copy() or ascontiguousarray first)")


def _require_device() -> None:
    from . import _backend

    ok, why = _backend.status()["device"]
    if not ok:
        raise RuntimeError(f"no CUDA device is usable: {why}")


def _cupy():
    from . import _backend

    ok, why = _backend.status()["cupy"]
    if not ok:
        raise RuntimeError(f"CuPy is required for CUDA arrays and is not usable: {why}")
    import cupy

    return cupy


def _check_device(name: str, arr) -> None:
    import cupy

    here = cupy.cuda.Device().id
    if arr.device.id != here:
        raise ValueError(f"{name}: lives on device {arr.device.id}, but the current device is {here} "
                         f"(use `with cupy.cuda.Device({arr.device.id}):`)")


def as_array(x: Any, name: str, *, dtypes: Iterable[str] = ("float32",),
             ndim: int | tuple[int, ...] | None = None, shape: tuple[int, ...] | None = None):
    """``x`` as a CuPy array on the current device, without a copy; see the module docstring.

    dtypes: accepted NumPy dtype names. ndim: the required number of dimensions (an int, a tuple of
    ints, or None for any). shape: the exact shape required (checked on metadata, before the device).
    """
    if x is None or isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        raise TypeError(f"{name}: expected a CUDA array (CuPy array, or an object with "
                        f"__cuda_array_interface__ or __dlpack__ on a CUDA device), got {_describe(x)}"
                        + (" on the host (move it with cupy.asarray first)"
                           if isinstance(x, np.ndarray) else ""))
    try:  # a CuPy array is recognised without touching the device
        import cupy as cupy_mod
    except Exception:  # CuPy missing: only the protocols below can apply
        cupy_mod = None

    if cupy_mod is not None and isinstance(x, cupy_mod.ndarray):
        _check_meta(name, _dtype_name(x.dtype), x.shape, x.flags.c_contiguous, dtypes, ndim, shape)
        _check_device(name, x)
        return x

    # A host tensor that speaks DLPack (torch CPU tensor) is refused before anything else reads it.
    if hasattr(x, "__dlpack_device__"):
        dev_type, _ = x.__dlpack_device__()
        if int(dev_type) not in _DLPACK_CUDA:
            raise TypeError(f"{name}: expected a CUDA array, got a {_describe(x)} on DLPack device "
                            f"type {int(dev_type)} (1 is the host; move it to the GPU first)")

    # PyTorch tensors have both protocols; __cuda_array_interface__ raises for tensors that require
    # grad, DLPack does too. Prefer the interface: its metadata is readable without the device.
    cai = None
    if hasattr(type(x), "__cuda_array_interface__") or hasattr(x, "__cuda_array_interface__"):
        try:
            cai = x.__cuda_array_interface__
        except Exception as e:  # e.g. torch: "Can't get __cuda_array_interface__ on Variable that requires grad"
            raise TypeError(f"{name}: its __cuda_array_interface__ is unavailable: {e}") from e
    if cai is not None:
        dt = np.dtype(cai["typestr"])
        xshape = tuple(int(n) for n in cai["shape"])
        strides = cai.get("strides")
        strides = None if strides is None else tuple(int(s) for s in strides)
        _check_meta(name, dt.name, xshape, _c_contiguous(xshape, strides, dt.itemsize), dtypes, ndim, shape)
        _require_device()
        cupy = _cupy()
        arr = cupy.asarray(x)
        _check_device(name, arr)
        return arr

    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        _require_device()
        cupy = _cupy()
        try:
            arr = cupy.from_dlpack(x)
        except Exception as e:
            raise TypeError(f"{name}: DLPack export of {_describe(x)} failed: {e}") from e
        _check_meta(name, _dtype_name(arr.dtype), arr.shape, arr.flags.c_contiguous, dtypes, ndim, shape)
        _check_device(name, arr)
        return arr

    raise TypeError(f"{name}: expected a CUDA array (CuPy array, or an object with "
                    f"__cuda_array_interface__ or __dlpack__ on a CUDA device), got {_describe(x)}")


@dataclass(frozen=True)
class ArrayMeta:
    """What the op wrappers need to know about a CUDA array before any launch."""

    shape: tuple[int, ...]
    dtype: str
    contiguous: bool
    ptr: int | None  # byte address, when the metadata carries it
    nbytes: int


# Dtypes a metadata-only read accepts when the caller checks the dtype itself (``dtypes=None``).
_ANY_DTYPE = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
              "uint8", "uint16", "uint32", "uint64", "bool")


def meta(x: Any, name: str, *, dtypes: Iterable[str] | None = None,
         ndim: int | tuple[int, ...] | None = None) -> ArrayMeta:
    """Shape, dtype, contiguity and address of a CUDA array, read from its metadata alone (CuPy's
    attributes or ``__cuda_array_interface__``) so that validation, and its tests, need no device.
    With ``dtypes``, checked as ``as_array`` checks (dtype, ``ndim``, contiguity). Anything else goes
    through ``as_array``: host arrays raise TypeError naming ``name``; CUDA DLPack objects are
    wrapped, which does need the device."""
    try:
        import cupy
    except Exception:  # CuPy missing: only the interface protocols can apply
        cupy = None
    if cupy is not None and isinstance(x, cupy.ndarray):
        m = ArrayMeta(tuple(x.shape), x.dtype.name, bool(x.flags.c_contiguous), int(x.data.ptr),
                      int(x.nbytes))
    else:
        cai = None
        if not isinstance(x, np.ndarray) and hasattr(x, "__cuda_array_interface__"):
            try:
                cai = x.__cuda_array_interface__
            except Exception:
                cai = None  # as_array below says why
        if cai is None:
            arr = as_array(x, name, dtypes=_ANY_DTYPE if dtypes is None else dtypes, ndim=ndim)
            return meta(arr, name, dtypes=dtypes, ndim=ndim)
        dt = np.dtype(cai["typestr"])
        shape = tuple(int(n) for n in cai["shape"])
        strides = cai.get("strides")
        strides = None if strides is None else tuple(int(s) for s in strides)
        ptr = int(cai["data"][0]) if cai.get("data") else None
        m = ArrayMeta(shape, dt.name, _c_contiguous(shape, strides, dt.itemsize), ptr,
                      math.prod(shape) * dt.itemsize)
    if dtypes is not None:
        _check_meta(name, m.dtype, m.shape, m.contiguous, dtypes, ndim)
    return m


def overlap(a: ArrayMeta, b: ArrayMeta) -> bool:
    """Whether two arrays' byte ranges intersect (an output may not alias an input)."""
    if a.ptr is None or b.ptr is None or a.nbytes == 0 or b.nbytes == 0:
        return False
    return a.ptr < b.ptr + b.nbytes and b.ptr < a.ptr + a.nbytes


def out_array(out: Any, name: str, shape: tuple[int, ...], dtype):
    """The output buffer: ``out`` checked against ``shape``/``dtype``, or a new ``cupy.empty``."""
    shape = tuple(int(n) for n in shape)
    dtype_name = _dtype_name(dtype)
    if out is None:
        _require_device()
        return _cupy().empty(shape, dtype=dtype_name)
    return as_array(out, name, dtypes=(dtype_name,), ndim=len(shape), shape=shape)


def check_int32_indexing(name: str, *sizes: int) -> int:
    """The element count ``prod(sizes)`` (e.g. ``check_int32_indexing("x", rows, cols)``), or
    ValueError when it exceeds what int32 offsets address with headroom for loop bounds
    (``INDEX_MAX`` = 2**31 - 1 - 2**16). Any single dimension is bounded by it too."""
    count = 1
    for n in sizes:
        n = int(n)
        if n < 0:
            raise ValueError(f"{name}: negative size {n}")
        count *= n
    if count > INDEX_MAX:
        dims = " x ".join(str(int(n)) for n in sizes)
        raise ValueError(f"{name}: {dims} = {count} elements overflows 32-bit indexing "
                         f"(at most {INDEX_MAX} elements: 2**31 - 1 less {INDEX_HEADROOM} of headroom "
                         f"for loop bounds); split the work into smaller calls")
    return count
