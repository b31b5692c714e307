"""Tests of tfm_kernels.attention_forward/backward (csrc/attention.cu, tfm_kernels/attention.py).

Two groups:
  * validation: every bad argument raises TypeError/ValueError naming it, before any launch; these
    run WITHOUT a GPU (arguments are fake CUDA arrays: __cuda_array_interface__ metadata only);
  * GPU: every fp32 variant on both backends against numpy_ref in float64: o, lse, dq, dk, dv
    checked separately, outputs poisoned with NaN before each launch.
Without a GPU the kernels themselves run on the CPU in tests/test_attention_emulation.py (the host
emulation of csrc/: csrc/attention.cu compiled by g++, every variant's own launch plan).

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

import numpy as np
import pytest

import numpy_ref
from helpers import FakeDeviceArray, assert_close_fp32, to_numpy

import tfm_kernels
from tfm_kernels import attention as att

# --------------------------------------------------------------------------------------------------
# Fake CUDA arrays for the validation tests: metadata only, no device.

FakeCuda = FakeDeviceArray


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


# --------------------------------------------------------------------------------------------------
# GPU: every fp32 variant of this module, both backends, against numpy_ref in float64.

# B, H, Lq, Lk, D, causal, kv_lens. Every head dim, every length of {1, 17, 64, 97, 200, 1025},
# Lq != Lk both ways under causal, kv_lens 0 and 1 and mid-tile, large B*H (4096 heads; 70000).
GPU_CASES = [
    (1, 1, 1, 1, 32, False, None),
    (2, 3, 17, 17, 64, True, None),
    (2, 2, 97, 200, 96, False, [200, 1]),
    (2, 2, 200, 97, 128, True, [0, 97]),
    (2, 1, 64, 64, 128, False, [64, 0]),
    (1, 2, 1025, 1025, 64, True, None),
    (1, 2, 1025, 17, 32, False, [17]),
    (1, 1, 17, 1025, 128, True, [1000]),
    (3, 1, 130, 64, 96, True, [1, 63, 64]),
    (64, 64, 17, 33, 64, False, "random"),
    (280, 250, 1, 3, 32, True, "random"),  # B*H = 70000 > 65535: flash only (naive: batched matmul)
]
FWD_VARIANTS = [v.key for v in tfm_kernels.variants("attention_forward") if v.number < 10]
BWD_VARIANTS = [v.key for v in tfm_kernels.variants("attention_backward") if v.number < 10]


def _case_id(c):
    B, H, Lq, Lk, D, causal, kvl = c
    return f"B{B}H{H}-q{Lq}k{Lk}-d{D}" + ("-causal" if causal else "") + ("" if kvl is None else "-kvlens")


def _make_case(rng, B, H, Lq, Lk, D, causal, kv_lens):
    # Queries 1.5x wider than keys: scores ~ N(0, 2.25) after scaling, so softmax rows are peaked
    # (max probability ~0.3 at Lk = 1025) rather than flat, and exp/max bookkeeping matters.
    q = (1.5 * rng.standard_normal((B, H, Lq, D))).astype(np.float32)
    k = rng.standard_normal((B, H, Lk, D)).astype(np.float32)
    v = rng.standard_normal((B, H, Lk, D)).astype(np.float32)
    do = rng.standard_normal((B, H, Lq, D)).astype(np.float32)
    if isinstance(kv_lens, str):
        kv_lens = rng.integers(0, Lk + 1, size=B)
        kv_lens[:2] = (0, 1)
    return q, k, v, do, None if kv_lens is None else np.asarray(kv_lens, dtype=np.int64)


def _check_grad(g, ref, term_scale, L, what):
    # Relative to the magnitude of the summed terms (att.grad_term_scales: dS = P (dP - D) cancels,
    # so max |ref| can be far below what fp32 rounds), and the sums run over L rows (dK, dV: Lq
    # queries; dQ: Lk keys): within one 64-row tile the 1e-5 bound covers them, beyond it errors
    # grow as the square root of the number of tiles.
    ok, mx, tol = att.grad_rule(term_scale, max(1, L // 64))(to_numpy(g), ref)
    assert ok, f"{what}: max err {mx:.3e} > tol {tol:.3e} (term scale {term_scale:.3e})"


def _refuses(op, variant, case):
    """Whether the variant declines this shape (naive past the batched matmul's 65535, the 8-keys-
    per-thread backward at head dims 96/128): the op must then raise ValueError("variant: ...")."""
    B, H, Lq, Lk, D, causal, _ = case
    v = tfm_kernels._registry.get(op, variant)
    return v.reason_unsupported(dtype="float32", batch=B, heads=H, seqlen_q=Lq, seqlen_k=Lk, head_dim=D,
                                causal=causal) is not None


def _check_forward(o, lse, o_ref, lse_ref):
    assert_close_fp32(o, o_ref, rtol=1e-5, what="o")
    lse = to_numpy(lse)
    assert np.array_equal(np.isneginf(lse), np.isneginf(lse_ref)), "lse: -inf rows differ"
    assert_close_fp32(lse, lse_ref, rtol=1e-5, what="lse")


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=_case_id)
def test_forward(backend, case, rng):
    import cupy

    B, H, Lq, Lk, D, causal, kv_lens = case
    q, k, v, _, kvl = _make_case(rng, *case)
    f64 = [x.astype(np.float64) for x in (q, k, v)]
    o_ref, lse_ref = numpy_ref.attention_forward(*f64, causal=causal, kv_lens=kvl)
    qd, kd, vd = (cupy.asarray(x) for x in (q, k, v))
    for variant in FWD_VARIANTS:
        out = (cupy.full((B, H, Lq, D), np.nan, np.float32), cupy.full((B, H, Lq), np.nan, np.float32))
        if _refuses("attention_forward", variant, case):
            with pytest.raises(ValueError, match="^variant:"):
                tfm_kernels.attention_forward(qd, kd, vd, causal, kvl, backend=backend, variant=variant, out=out)
            continue
        o, lse = tfm_kernels.attention_forward(qd, kd, vd, causal=causal, kv_lens=kvl, backend=backend,
                                               variant=variant, out=out)
        assert o is out[0] and lse is out[1]
        _check_forward(o, lse, o_ref, lse_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=_case_id)
def test_backward(backend, case, rng):
    import cupy

    B, H, Lq, Lk, D, causal, kv_lens = case
    q, k, v, do, kvl = _make_case(rng, *case)
    # The kernels are given fp32 o and lse; the reference is given exactly those values in float64.
    o32, lse32 = (x.astype(np.float32) for x in numpy_ref.attention_forward(
        *(x.astype(np.float64) for x in (q, k, v)), causal=causal, kv_lens=kvl))
    f64 = [x.astype(np.float64) for x in (do, q, k, v, o32, lse32)]
    refs = numpy_ref.attention_backward(*f64, causal=causal, kv_lens=kvl)
    terms = att.grad_term_scales(*f64, causal=causal, kv_lens=kvl)
    dev = [cupy.asarray(x) for x in (do, q, k, v, o32, lse32)]
    for variant in BWD_VARIANTS:
        out = tuple(cupy.full(s, np.nan, np.float32) for s in ((B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D)))
        if _refuses("attention_backward", variant, case):
            with pytest.raises(ValueError, match="^variant:"):
                tfm_kernels.attention_backward(*dev, causal, kvl, backend=backend, variant=variant, out=out)
            continue
        grads = tfm_kernels.attention_backward(*dev, causal=causal, kv_lens=kvl, backend=backend,
                                               variant=variant, out=out)
        for name, g, r, L, t in zip(("dq", "dk", "dv"), grads, refs, (Lk, Lq, Lq), terms):
            _check_grad(g, r, t, L, f"{variant} {name}")


@pytest.mark.gpu
def test_forward_backward_defaults_and_device_kv_lens(backend, rng):
    """scale=None is 1/sqrt(D); kv_lens may be a CuPy array; no out= allocates; the default variants
    chain (forward's own o and lse feed backward)."""
    import cupy

    q, k, v, do, _ = _make_case(rng, 3, 2, 97, 130, 64, True, None)
    kvl = np.array([130, 0, 50])
    f64 = [x.astype(np.float64) for x in (q, k, v, do)]
    o_ref, lse_ref = numpy_ref.attention_forward(*f64[:3], causal=True, kv_lens=kvl)
    qd, kd, vd, dod = (cupy.asarray(x) for x in (q, k, v, do))
    o, lse = tfm_kernels.attention_forward(qd, kd, vd, True, cupy.asarray(kvl, dtype=cupy.int32),
                                           backend=backend)
    _check_forward(o, lse, o_ref, lse_ref)
    grads = tfm_kernels.attention_backward(dod, qd, kd, vd, o, lse, True, cupy.asarray(kvl), backend=backend)
    o64, lse64 = o.get().astype(np.float64), lse.get().astype(np.float64)
    refs = numpy_ref.attention_backward(f64[3], *f64[:3], o64, lse64, causal=True, kv_lens=kvl)
    terms = att.grad_term_scales(f64[3], *f64[:3], o64, lse64, causal=True, kv_lens=kvl)
    for name, g, r, t in zip(("dq", "dk", "dv"), grads, refs, terms):
        _check_grad(g, r, t, 130, name)


@pytest.mark.gpu
def test_deterministic_dq_is_bitwise_reproducible(backend, rng):
    import cupy

    q, k, v, do, _ = _make_case(rng, 2, 4, 300, 300, 128, False, None)
    o, lse = (x.astype(np.float32) for x in numpy_ref.attention_forward(
        *(x.astype(np.float64) for x in (q, k, v))))
    dev = [cupy.asarray(x) for x in (do, q, k, v, o, lse)]
    first = [g.get() for g in tfm_kernels.attention_backward(*dev, backend=backend, variant="3_flash_det")]
    for _ in range(3):
        again = tfm_kernels.attention_backward(*dev, backend=backend, variant="3_flash_det")
        for a, b in zip(first, again):
            assert np.array_equal(a, b.get())
