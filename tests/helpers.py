"""Tolerance rules and test utilities shared by the kernel tests (imported as `helpers`).

fp32: relative error near 1e-6, scaled by sqrt(reduction length) for long reductions.
fp16/bf16: no worse than 2x the error of the same computation done at that precision in NumPy
(FlashAttention's rule), plus a small floor so exact-zero baselines do not demand exact results.
The max and mean error are always in the assertion message.
"""

from __future__ import annotations

import numpy as np

POISON = float("nan")


class FakeDeviceArray:
    """Metadata of a CUDA array (``__cuda_array_interface__``) with no memory behind it: enough for
    the wrappers' checks, which run before the device is touched, so validation is tested without a
    GPU. Each instance gets a distinct, 256-byte-aligned address range; ``offset`` shifts the start
    (a misaligned view), ``ptr`` fixes it."""

    _next = 1 << 32

    def __init__(self, shape, dtype="float32", strides=None, ptr=None, offset=0):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if ptr is None:  # distinct, 256-byte aligned, non-overlapping addresses
            ptr = FakeDeviceArray._next
            FakeDeviceArray._next += (int(np.prod(self.shape)) * self.dtype.itemsize + 255) // 256 * 256 + 256
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": self.dtype.str, "strides": strides,
            "data": (ptr + offset, False), "version": 3,
        }


def to_numpy(x) -> np.ndarray:
    if hasattr(x, "get"):
        return x.get()
    return np.asarray(x)


def errors(out, ref) -> tuple[float, float, float]:
    """(max abs error, mean abs error, max abs of ref), in float64; NaN anywhere gives inf error."""
    out = to_numpy(out).astype(np.float64)
    ref = to_numpy(ref).astype(np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference {ref.shape}"
    # Same non-finite pattern (-inf lse rows) is agreement; anything else non-finite is an error.
    both_inf = np.isinf(out) & np.isinf(ref) & (np.sign(out) == np.sign(ref))
    with np.errstate(invalid="ignore"):  # inf - inf where both_inf; replaced by 0 below
        diff = np.where(both_inf, 0.0, np.abs(out - ref))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = float(np.max(np.abs(np.where(np.isfinite(ref), ref, 0.0)), initial=0.0))
    return float(np.max(diff, initial=0.0)), float(np.mean(diff)) if diff.size else 0.0, scale


def assert_close_fp32(out, ref, *, reduction: int = 1, rtol: float = 1e-6, what: str = "out"):
    """|out - ref| <= rtol * sqrt(reduction) * max|ref| (plus a tiny floor), elementwise max."""
    mx, mean, scale = errors(out, ref)
    tol = rtol * max(1.0, np.sqrt(reduction)) * max(scale, 1e-30) + 1e-30
    assert mx <= tol, f"{what}: max err {mx:.3e} (mean {mean:.3e}) > tol {tol:.3e}, ref scale {scale:.3e}"


def assert_close_lowprec(out, ref, baseline, *, floor: float = 1e-5, what: str = "out"):
    """Kernel error against the float64 ref <= 2x the error of `baseline` (the same computation in
    NumPy at the kernel's precision) + floor * max|ref|."""
    mx, mean, scale = errors(out, ref)
    base, _, _ = errors(baseline, ref)
    tol = 2.0 * base + floor * max(scale, 1e-30)
    assert mx <= tol, (f"{what}: max err {mx:.3e} (mean {mean:.3e}) > 2 x baseline {base:.3e} "
                       f"+ floor {floor:.1e} x scale {scale:.3e}")


def ext_sass() -> dict[str, str]:
    """{mangled kernel name: SASS} of the built extension (tfm_kernels/_sass.py: cuobjdump from the
    toolkit or the `test` extra's wheels); skips where either is missing. A kernel built for several
    architectures has its images joined (`tfm_kernels._sass.images` cuts them apart)."""
    import pytest

    from tfm_kernels import _backend, _sass

    if _sass.cuobjdump() is None:
        pytest.skip("cuobjdump/nvdisasm not found (the test extra installs them)")
    if not _backend.status()["ext"][0]:
        pytest.skip(f"extension not built: {_backend.status()['ext'][1]}")
    from tfm_kernels import _ext

    return _sass.dump_sass(_ext.__file__)


def load_script(name: str):
    """scripts/<name>.py imported as a module (scripts/ is not a package): how the tests reach
    gpu_check.sh's helpers (gpu_summary, gpu_verdicts) without running them as commands."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
