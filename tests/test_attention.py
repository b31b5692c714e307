"""Tests of tfm_kernels.attention_forward/backward (csrc/attention.cu, tfm_kernels/attention.py).

Three groups:
  * validation: every bad argument raises TypeError/ValueError naming it, before any launch; these
    run WITHOUT a GPU (arguments are fake CUDA arrays: __cuda_array_interface__ metadata only);
  * emulation (CPU): csrc/attention.cu's flash kernels re-enacted in NumPy thread by thread (the
    16 x 16 thread mapping, the shared-memory layout with its strides, edge zero-fill, causal and
    kv_lens skipping, the atomic and the deterministic dQ) on awkward shapes, against numpy_ref;
    blind-written kernels fail at edges, and this is where an index bug shows up without a GPU;
  * GPU: every fp32 variant on both backends against numpy_ref in float64: o, lse, dq, dk, dv
    checked separately, outputs poisoned with NaN before each launch.

fp32 tolerance: max |out - ref| <= 1e-5 * max |ref|. Why 1e-5 and not the project's 1e-6 x
sqrt(K): attention chains two reductions (D-long dot products, then Lk- or Lq-long sums over
exp-weighted rows), and an absolute error e in a score becomes a relative error e in its
probability; scores here are O(3), so the fp32 rounding of q.k (about 1e-7 x sqrt(D) x |q||k|)
reaches ~1e-6 relative in P, and the Lk-long sums add sqrt(Lk) x 6e-8. 1e-5 bounds both at
L = 1025, D = 128 with a 3x margin and still fails on any indexing or masking error (those are
O(1)). The gradients use the same bound scaled by sqrt(L / 64) beyond one tile of 64: dK and dV
sum over Lq query rows, dQ over Lk keys, in fp32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import numpy_ref
from helpers import assert_close_fp32, to_numpy

import tfm_kernels
from tfm_kernels import attention as att

# --------------------------------------------------------------------------------------------------
# Fake CUDA arrays for the validation tests: metadata only, no device.


class FakeCuda:
    """An object with __cuda_array_interface__ (what Numba/PyTorch CUDA arrays expose): the op reads
    its shape, dtype and strides without touching a device."""

    def __init__(self, shape, dtype="float32", strides=None, ptr=0x7F0000000000):
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": self.dtype.str, "data": (ptr, False),
            "strides": strides, "version": 3,
        }


def fake_qkv(B=2, H=3, Lq=17, Lk=33, D=64, dtype="float32"):
    return FakeCuda((B, H, Lq, D), dtype), FakeCuda((B, H, Lk, D), dtype), FakeCuda((B, H, Lk, D), dtype)


def _raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


class TestValidationForward:
    """No GPU needed: each of these fails in metadata checks, before any backend is touched."""

    def test_host_arrays_refused(self):
        q = np.zeros((1, 1, 4, 32), np.float32)
        _raises(TypeError, r"^q: .*host", tfm_kernels.attention_forward, q, q, q)

    def test_rank(self):
        q, k, v = fake_qkv()
        _raises(ValueError, r"^q: expected 4 dimensions", tfm_kernels.attention_forward,
                FakeCuda((2, 17, 64)), k, v)
        _raises(ValueError, r"^v: expected 4 dimensions", tfm_kernels.attention_forward,
                q, k, FakeCuda((2, 3, 33, 64, 1)))

    def test_dtypes(self):
        q, k, v = fake_qkv()
        _raises(TypeError, r"^q: expected dtype", tfm_kernels.attention_forward,
                FakeCuda(q.shape, "float64"), k, v)
        _raises(TypeError, r"^k: expected dtype", tfm_kernels.attention_forward,
                q, FakeCuda(k.shape, "int32"), v)
        _raises(TypeError, r"^k: dtype float16 differs from q's float32", tfm_kernels.attention_forward,
                q, FakeCuda(k.shape, "float16"), v)
        _raises(TypeError, r"^v: dtype float16 differs", tfm_kernels.attention_forward,
                q, k, FakeCuda(v.shape, "float16"))

    def test_shapes(self):
        q, k, v = fake_qkv(B=2, H=3, Lq=17, Lk=33, D=64)
        _raises(ValueError, r"^k: expected shape \(B, H, Lk, D\)", tfm_kernels.attention_forward,
                q, FakeCuda((2, 3, 33, 32)), v)
        _raises(ValueError, r"^k: expected shape", tfm_kernels.attention_forward,
                q, FakeCuda((1, 3, 33, 64)), v)
        _raises(ValueError, r"^k: expected shape", tfm_kernels.attention_forward,
                q, FakeCuda((2, 4, 33, 64)), v)
        _raises(ValueError, r"^v: expected k's shape", tfm_kernels.attention_forward,
                q, k, FakeCuda((2, 3, 32, 64)))
        _raises(ValueError, r"^q: no dimension may be empty", tfm_kernels.attention_forward,
                FakeCuda((2, 3, 0, 64)), k, v)
        _raises(ValueError, r"^k: no dimension may be empty", tfm_kernels.attention_forward,
                q, FakeCuda((2, 3, 0, 64)), FakeCuda((2, 3, 0, 64)))

    def test_contiguity_and_alignment(self):
        q, k, v = fake_qkv(D=64)
        strided = FakeCuda((2, 3, 17, 64), strides=(3 * 17 * 128 * 4, 17 * 128 * 4, 128 * 4, 4))
        _raises(ValueError, r"^q: must be C-contiguous", tfm_kernels.attention_forward, strided, k, v)
        _raises(ValueError, r"^v: data pointer .* not 16-byte aligned", tfm_kernels.attention_forward,
                q, k, FakeCuda(v.shape, ptr=0x7F0000000004))

    def test_causal_and_scale(self):
        q, k, v = fake_qkv()
        _raises(TypeError, r"^causal: expected a bool", tfm_kernels.attention_forward, q, k, v, causal=1)
        _raises(TypeError, r"^causal: expected a bool", tfm_kernels.attention_forward, q, k, v, causal="yes")
        _raises(TypeError, r"^scale: expected a real number", tfm_kernels.attention_forward, q, k, v,
                scale="0.1")
        _raises(TypeError, r"^scale: expected a real number", tfm_kernels.attention_forward, q, k, v,
                scale=True)
        for bad in (float("nan"), float("inf"), -float("inf")):
            _raises(ValueError, r"^scale: must be finite", tfm_kernels.attention_forward, q, k, v, scale=bad)

    def test_kv_lens(self):
        q, k, v = fake_qkv(B=2, Lk=33)
        f = tfm_kernels.attention_forward
        _raises(TypeError, r"^kv_lens: expected an integer array", f, q, k, v, kv_lens=[1.0, 2.0])
        _raises(TypeError, r"^kv_lens: expected an integer array", f, q, k, v, kv_lens=np.array([True, False]))
        _raises(ValueError, r"^kv_lens: expected shape \(B,\) = \(2,\)", f, q, k, v, kv_lens=[3])
        _raises(ValueError, r"^kv_lens: expected shape", f, q, k, v, kv_lens=np.array([[3, 4]]))
        _raises(ValueError, r"^kv_lens: values must lie in \[0, Lk\] = \[0, 33\]", f, q, k, v, kv_lens=[-1, 3])
        _raises(ValueError, r"^kv_lens: values must lie in", f, q, k, v, kv_lens=[34, 3])
        _raises(TypeError, r"^kv_lens: expected an integer array", f, q, k, v,
                kv_lens=FakeCuda((2,), "float32"))
        _raises(ValueError, r"^kv_lens: expected shape", f, q, k, v, kv_lens=FakeCuda((3,), "int32"))

    def test_head_dim_and_variant(self):
        q, k, v = fake_qkv(D=80)
        _raises(ValueError, r"^variant: attention_forward/2_flash .*head_dim 80", tfm_kernels.attention_forward,
                q, k, v, variant="flash")
        _raises(ValueError, r"^variant: attention_forward has no variant 'nope'", tfm_kernels.attention_forward,
                q, k, v, variant="nope")
        q, k, v = fake_qkv(D=64)
        _raises(TypeError, r"^variant: attention_forward/2_flash takes float32",
                tfm_kernels.attention_forward, *fake_qkv(dtype="float16"), variant="2_flash")

    def test_int32_limits(self):
        # One head of 2**25 rows x 128 = 2**32 elements: beyond the kernels' int32 offsets.
        q, k, v = fake_qkv(B=1, H=1, Lq=2**25, Lk=16, D=128)
        _raises(ValueError, r"^q: .*overflows 32-bit indexing", tfm_kernels.attention_forward, q, k, v)

    def test_out(self):
        q, k, v = fake_qkv(B=2, H=3, Lq=17, D=64)
        f = tfm_kernels.attention_forward
        _raises(TypeError, r"^out: expected a tuple \(o, lse\)", f, q, k, v, out=FakeCuda(q.shape))
        _raises(ValueError, r"^out\[0\] \(o\): expected shape", f, q, k, v,
                out=(FakeCuda((2, 3, 16, 64)), FakeCuda((2, 3, 17))))
        _raises(TypeError, r"^out\[1\] \(lse\): expected dtype float32", f, q, k, v,
                out=(FakeCuda(q.shape), FakeCuda((2, 3, 17), "float16")))
        _raises(ValueError, r"^out\[1\] \(lse\): expected shape", f, q, k, v,
                out=(FakeCuda(q.shape), FakeCuda((2, 3, 18))))

    def test_valid_call_without_gpu_fails_only_at_the_device(self):
        # Everything checks out; the first device step says why it cannot run (RuntimeError), never
        # a TypeError/ValueError about an argument.
        from tfm_kernels import _backend

        if _backend.status()["device"][0]:
            pytest.skip("a GPU is present: this checks the no-GPU path")
        with pytest.raises(RuntimeError):
            tfm_kernels.attention_forward(*fake_qkv(), causal=True, kv_lens=[0, 33], scale=0.3)


class TestValidationBackward:
    def _args(self, B=2, H=3, Lq=17, Lk=33, D=64):
        q, k, v = fake_qkv(B, H, Lq, Lk, D)
        return [FakeCuda(q.shape), q, k, v, FakeCuda(q.shape), FakeCuda((B, H, Lq))]

    def test_do_o_lse(self):
        f = tfm_kernels.attention_backward
        a = self._args()
        _raises(ValueError, r"^do: expected q's shape", f, FakeCuda((2, 3, 16, 64)), *a[1:])
        _raises(TypeError, r"^do: dtype float16 differs", f, FakeCuda(a[0].shape, "float16"), *a[1:])
        _raises(ValueError, r"^o: expected q's shape", f, *a[:4], FakeCuda((2, 3, 17, 32)), a[5])
        _raises(TypeError, r"^lse: expected dtype float32", f, *a[:5], FakeCuda((2, 3, 17), "float16"))
        _raises(ValueError, r"^lse: expected shape \(B, H, Lq\)", f, *a[:5], FakeCuda((2, 3, 16)))
        _raises(ValueError, r"^lse: expected 3 dimensions", f, *a[:5], FakeCuda((2, 3, 17, 1)))

    def test_shared_checks(self):
        f = tfm_kernels.attention_backward
        a = self._args()
        _raises(ValueError, r"^k: expected shape", f, a[0], a[1], FakeCuda((2, 3, 33, 32)), *a[3:])
        _raises(TypeError, r"^causal: expected a bool", f, *a, causal=None)
        _raises(ValueError, r"^kv_lens: values must lie in", f, *a, kv_lens=[0, 34])
        _raises(ValueError, r"^scale: must be finite", f, *a, scale=float("nan"))
        _raises(ValueError, r"^variant: attention_backward/2_flash .*head_dim 48", f,
                *self._args(D=48), variant=2)

    def test_out(self):
        f = tfm_kernels.attention_backward
        a = self._args(Lq=17, Lk=33)
        _raises(TypeError, r"^out: expected a tuple \(dq, dk, dv\)", f, *a, out=(FakeCuda((2, 3, 17, 64)),))
        _raises(ValueError, r"^out\[1\] \(dk\): expected shape", f, *a,
                out=(FakeCuda((2, 3, 17, 64)), FakeCuda((2, 3, 17, 64)), FakeCuda((2, 3, 33, 64))))


def test_registry():
    fwd = {v.key: v for v in tfm_kernels.variants("attention_forward")}
    bwd = {v.key: v for v in tfm_kernels.variants("attention_backward")}
    assert {"1_naive", "2_flash"} <= set(fwd)
    assert {"1_naive", "2_flash", "3_flash_det"} <= set(bwd)
    assert fwd["2_flash"].hot and bwd["2_flash"].hot and bwd["3_flash_det"].hot
    for v in list(fwd.values()) + list(bwd.values()):
        assert v.description and v.kernels, v.qualname
    # The default fp32 backward is the atomic one; the deterministic one is asked for by name.
    from tfm_kernels._registry import choose

    info = dict(batch=2, heads=2, seqlen_q=64, seqlen_k=64, head_dim=64, causal=False)
    assert choose("attention_backward", None, dtype="float32", **info).key == "2_flash"
    assert choose("attention_forward", None, dtype="float32", **info).key == "2_flash"
    assert choose("attention_forward", None, dtype="float32", **{**info, "head_dim": 80}).key == "1_naive"
