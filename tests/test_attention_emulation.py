"""tests/test_attention_emulation.py: csrc/attention.cu and csrc/attention_tc.cu themselves, compiled
for the CPU and run through every variant's own launch plan, against numpy_ref. No GPU needed
(g++ >= 12).

tests/_emulate_cuda.py builds each source on tests/cuda_host/cuda_host.h (a fiber per CUDA thread,
one CTA at a time, NaN-poisoned shared memory, cp.async landing only at its wait, ldmatrix and
mma.sync computed for the whole warp from the PTX ISA's fragment layouts, float atomics). So the
fp32 flash kernels (forward 2-4, backward 2-4, the preprocessing pass), the naive variants (their
mask and lse kernels, and this project's own default matmul and softmax kernels, emulated too) and
the fp16 tensor-core kernels (forward 10, 13; backward 11, 12 with the dQ pass and conversion;
forward 14 and backward 13, wgmma from shared-memory descriptors and from registers) run their real
tiling, masking, online softmax, fragment shuffles and pipelines here. Each case runs with each
CTA's warps and lanes scheduled first to last and again last to first (where a warpgroup released
from a wgmma also runs ahead of the others), so a missing barrier between a write
and another warp's read shows.

Tolerances are the GPU tests' (tests/test_attention.py, tests/test_attention_tc.py): fp32 ~1e-5
relative to the summed terms, fp16 no worse than 2x the fp32-math NumPy baseline plus a floor.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
from helpers import assert_close_fp32, assert_close_lowprec

emu = pytest.importorskip("_emulate_cuda")
att = importlib.import_module("tfm_kernels.attention")
tc = importlib.import_module("tfm_kernels.attention_tc")
mm = importlib.import_module("tfm_kernels.matmul")

SOURCES = ("attention.cu", "attention_tc.cu", "attention_sm90.cu", "matmul.cu", "softmax.cu")
EMULABLE = set(SOURCES)


def _emulable(v):
    return {s for s, _ in v.kernels} <= EMULABLE


_RESULTS: dict = {}  # (kind, case, order) -> kernels launched; read by test_every_kernel_ran
FWD = [v for v in tfm_kernels.variants("attention_forward") if _emulable(v)]
BWD = [v for v in tfm_kernels.variants("attention_backward") if _emulable(v)]

# Awkward shapes: lengths that are not multiples of 64 on both sides (1, 17, 65, 97, 129, 130,
# 200), Lq > Lk and Lq < Lk under causal, kv_lens 0, 1 and mid-tile, every head dim (96 and 32
# take the float2 column tail); backward 4 (head dims 32, 64) in the last two.
CASES = [
    # B, H, Lq, Lk, D, causal, kv_lens
    (2, 1, 97, 130, 96, False, [130, 70]),
    (2, 2, 130, 65, 32, True, [0, 65]),
    (1, 1, 1, 200, 64, True, None),
    (1, 2, 65, 1, 128, False, [1]),
    (3, 1, 64, 129, 64, True, [1, 63, 129]),
    (1, 1, 200, 97, 128, True, [97]),
    (2, 1, 17, 97, 32, True, [97, 1]),
    (1, 2, 97, 17, 64, True, None),
]


@pytest.fixture(scope="module")
def libs():
    built = emu.build(SOURCES)
    for lib in built.values():
        if isinstance(lib, str):
            pytest.skip(f"host emulation unavailable: {lib}")
    return built


class _PoisonedNumPy:
    """NumPy, except that `empty` is NaN-filled: what the launchers allocate for themselves
    (cupy.get_array_module(x).empty) starts as garbage, as device memory would."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=np.float64):
        return np.full(shape, np.nan, dtype)


@pytest.fixture(params=["forward", "reverse"])
def be(request, libs, monkeypatch):
    """A HostBackend, with tfm_kernels.matmul / softmax / softmax_backward (which the naive
    variants compose) running their default kernels on it too."""
    import cupy

    host = emu.HostBackend(request.param, libs)
    monkeypatch.setattr(cupy, "get_array_module", lambda *a: _PoisonedNumPy())

    def pick(op, x, **info):  # what the op itself would choose, the sm_90a variants excluded
        return tfm_kernels._registry.choose(op, None, dtype=np.dtype(x.dtype).name, cc=89, **info)

    def matmul(a, b, trans_a=False, trans_b=False, *, backend=None, out=None):
        assert backend == emu.HostBackend.name
        M = a.shape[-1] if trans_a else a.shape[-2]
        N = b.shape[-2] if trans_b else b.shape[-1]
        if out is None:
            out = emu.host_array(np.full(a.shape[:-2] + (M, N), np.nan, np.float32))
        M_, N_, K_, batch = mm.dims(a, b, trans_a, trans_b)
        info = dict(M=M_, N=N_, K=K_, batch=batch, trans_a=trans_a, trans_b=trans_b, out_dtype="float32",
                    align=mm._align(a.ctypes.data, b.ctypes.data, out.ctypes.data))
        pick("matmul", a, **info).fn(host, emu.host_array(a), emu.host_array(b), trans_a, trans_b, out)
        return out

    def softmax(x, *, backend=None):
        out = emu.host_array(np.full(x.shape, np.nan, x.dtype))
        pick("softmax", x, **_rows_cols(x)).fn(host, emu.host_array(x), out)
        return out

    def softmax_backward(dy, y, *, backend=None):
        out = emu.host_array(np.full(y.shape, np.nan, y.dtype))
        pick("softmax_backward", y, **_rows_cols(y)).fn(host, emu.host_array(dy), emu.host_array(y), out)
        return out

    monkeypatch.setattr(tfm_kernels, "matmul", matmul)
    monkeypatch.setattr(tfm_kernels, "softmax", softmax)
    monkeypatch.setattr(tfm_kernels, "softmax_backward", softmax_backward)
    return host


def _rows_cols(x):
    return dict(rows=int(np.prod(x.shape[:-1])), cols=x.shape[-1])


def _info(dtype, B, H, Lq, Lk, D, causal):
    return dict(dtype=dtype, batch=B, heads=H, seqlen_q=Lq, seqlen_k=Lk, head_dim=D, causal=causal)


def _ids(cases):
    return [f"B{b}H{h}-{lq}x{lk}-D{d}-{'causal' if c else 'full'}-{'kv' if kv else 'nokv'}"
            for b, h, lq, lk, d, c, kv in cases]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_fp32(case, be, rng):
    """Every emulable fp32 variant, forward and backward, one case: o and lse (with the -inf rows
    where they belong), each gradient against the magnitude of its summed terms."""
    _fp32(case, be, rng, emu.host_array)
    _RESULTS[("fp32", case[:5], be.order)] = set(be.launched)


def _fp32(case, be, rng, wrap):
    """test_fp32's body; `wrap` places every array the kernels see (host_array, or guarded)."""
    B, H, Lq, Lk, D, causal, kv = case
    q = (1.5 * rng.standard_normal((B, H, Lq, D))).astype(np.float32)
    k, v = (rng.standard_normal((B, H, Lk, D)).astype(np.float32) for _ in range(2))
    do = rng.standard_normal((B, H, Lq, D)).astype(np.float32)
    scale = 1.3 / math.sqrt(D)  # not the default: the kernels must use the one they are given
    kvl = None if kv is None else np.array(kv)
    kvl32 = wrap(np.full(B, Lk, np.int32) if kvl is None else kvl.astype(np.int32))
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    o_ref, lse_ref = numpy_ref.attention_forward(f64(q), f64(k), f64(v), causal=causal, kv_lens=kvl, scale=scale)
    o32, l32 = o_ref.astype(np.float32), lse_ref.astype(np.float32)
    g_ref = numpy_ref.attention_backward(f64(do), f64(q), f64(k), f64(v), f64(o32), f64(l32), causal=causal,
                                         kv_lens=kvl, scale=scale)
    terms = att.grad_term_scales(f64(do), f64(q), f64(k), f64(v), f64(o32), f64(l32), causal, kvl, scale)
    qh, kh, vh, doh = (wrap(x) for x in (q, k, v, do))
    ran = 0
    for var in FWD:
        if "float32" not in var.dtypes or var.reason_unsupported(**_info("float32", *case[:6])):
            continue
        o, lse = wrap(np.full(q.shape, np.nan, np.float32)), wrap(np.full(q.shape[:3], np.nan, np.float32))
        var.fn(be, qh, kh, vh, kvl32, causal, scale, o, lse)
        what = f"{var.qualname} emulated ({be.order})"
        assert_close_fp32(o, o_ref, rtol=1e-5, what=f"{what} o")
        assert np.array_equal(np.isneginf(lse), np.isneginf(lse_ref)), f"{what} lse: -inf rows differ"
        assert_close_fp32(lse, lse_ref, rtol=1e-5, what=f"{what} lse")
        ran += 1
    for var in BWD:
        if "float32" not in var.dtypes or var.reason_unsupported(**_info("float32", *case[:6])):
            continue
        grads = [wrap(np.full(x.shape, np.nan, np.float32)) for x in (q, k, v)]
        var.fn(be, doh, qh, kh, vh, wrap(o32), wrap(l32), kvl32, causal, scale, *grads)
        for name, g, r, t, L in zip(("dq", "dk", "dv"), grads, g_ref, terms, (Lk, Lq, Lq)):
            ok, mx, tol = att.grad_rule(t, max(1, L // 64))(np.asarray(g), r)
            assert ok, f"{var.qualname} emulated ({be.order}) {name}: max err {mx:.3e} > tol {tol:.3e}"
        ran += 1
    assert ran >= 4


# Ragged query and key tiles, multi-block key loops, the diagonal inside a tile, kv_len cutting a
# tile, 0 (no key) and 1, Lq > Lk and Lq < Lk, every head dim; for forward 14 (D 64, 128) also a
# second, ragged 128-row query tile, 128-key tiles cut by kv_len and by the diagonal, and Lq = 1
# (127 padding rows in its tile); for backward 13 (D 64, 128) several 128-key blocks and ragged
# query steps, kv_len 0; and non-causal rows over 3-4 key tiles, so forward 14/15's K/V rings turn
# (in the forward order cp.async lands at once: a tile refilled while still read shows).
FP16_CASES = [
    (1, 2, 1, 17, 64, False, None),
    (2, 1, 97, 130, 32, False, [0, 100]),
    (1, 1, 130, 97, 96, True, None),
    (2, 1, 200, 65, 128, True, [1, 65]),
    (1, 1, 64, 200, 64, True, [150]),
    (2, 1, 17, 5, 64, True, [0, 5]),
    (1, 1, 150, 300, 128, True, [280]),
    (1, 1, 1, 97, 128, True, None),
    (1, 1, 70, 90, 32, True, None),
    (2, 1, 130, 390, 64, False, [0, 385]),
    (2, 1, 130, 300, 128, False, [300, 260]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", FP16_CASES, ids=_ids(FP16_CASES))
def test_fp16(case, be):
    """Every emulable fp16 (tensor-core) variant, forward and backward, one case: against the
    float64 reference, no worse than 2x the fp32-math NumPy baseline plus the GPU tests' floor;
    and no ldmatrix bank conflict."""
    _fp16(case, be, emu.host_array)
    _RESULTS[("fp16", case[:5], be.order)] = set(be.launched)
    # csrc/attention_tc.cu pads shared rows by 16 bytes so that the 8 rows of every ldmatrix phase
    # fall on 8 distinct 16-byte bank groups: counted on the kernels' own addresses, every phase.
    assert be.ldmatrix_phases, "no ldmatrix ran"
    for kernel, phases in be.ldmatrix_phases.items():
        assert sum(phases[:8]) == 0, f"{kernel}: ldmatrix phases by bank groups touched {phases}"


def _fp16(case, be, wrap):
    """test_fp16's body; `wrap` places every array the kernels see (host_array, or guarded)."""
    B, H, Lq, Lk, D, causal, kv = case
    rng = np.random.default_rng([B, H, Lq, Lk, D, int(causal)])
    q, do = (rng.standard_normal((B, H, Lq, D)).astype(np.float16) for _ in range(2))
    k, v = (rng.standard_normal((B, H, Lk, D)).astype(np.float16) for _ in range(2))
    kvl = None if kv is None else np.array(kv)
    kvl32 = wrap(np.full(B, Lk, np.int32) if kvl is None else kvl.astype(np.int32))
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    scale = 1.0 / math.sqrt(D)
    ro, rl = numpy_ref.attention_forward(f64(q), f64(k), f64(v), causal, kvl)
    o16, lse32 = ro.astype(np.float16), rl.astype(np.float32)
    rg = numpy_ref.attention_backward(f64(do), f64(q), f64(k), f64(v), f64(o16), f64(lse32), causal, kvl)
    b_o, b_lse, b_g = tc.fp16_baseline(q, k, v, do, o16, lse32, causal, kvl, scale)
    qh, kh, vh, doh = (wrap(x) for x in (q, k, v, do))
    ran = 0
    for var in FWD:
        if "float16" not in var.dtypes or var.reason_unsupported(**_info("float16", *case[:6])):
            continue
        o, lse = wrap(np.full(q.shape, np.nan, np.float16)), wrap(np.full(q.shape[:3], np.nan, np.float32))
        var.fn(be, qh, kh, vh, kvl32, causal, scale, o, lse)
        what = f"{var.qualname} emulated ({be.order})"
        assert_close_lowprec(o, ro, b_o, floor=1e-3, what=f"{what} o")
        assert_close_lowprec(lse, rl, b_lse, floor=1e-5, what=f"{what} lse")
        ran += 1
    # A row that sees exactly one key has dq = dk = 0 exactly (P = 1, dP = D_i): the fp16 rule has
    # no scale to measure against there (the GPU tests keep such cases forward-only too).
    one_key = Lk == 1 or (causal and Lq == 1)
    for var in BWD:
        if one_key or "float16" not in var.dtypes or var.reason_unsupported(**_info("float16", *case[:6])):
            continue
        grads = [wrap(np.full(x.shape, np.nan, np.float16)) for x in (q, k, v)]
        var.fn(be, doh, qh, kh, vh, wrap(o16), wrap(lse32), kvl32, causal, scale, *grads)
        for name, g, r, b in zip(("dq", "dk", "dv"), grads, rg, b_g):
            assert_close_lowprec(g, r, b, floor=1e-3, what=f"{var.qualname} emulated ({be.order}) {name}")
        ran += 1
    assert ran >= (1 if one_key else 2)


MEMCHECK = [("fp32", CASES[1]), ("fp32", CASES[5]), ("fp16", FP16_CASES[1]), ("fp16", FP16_CASES[3])]


@pytest.mark.slow
@pytest.mark.parametrize("be", ["forward"], indirect=True)  # bounds do not depend on the order
@pytest.mark.parametrize("align", [None, 16], ids=["end", "aligned"])
@pytest.mark.parametrize("kind, case", MEMCHECK, ids=[f"{k}-{i}" for (k, _), i in zip(MEMCHECK, _ids([c for _, c in MEMCHECK]))])
def test_memcheck(kind, case, align, be, rng):
    """The same checks with every array the kernels see between inaccessible pages (guarded): a
    read or write even one element past q, k, v, o, lse, dO, kv_lens or a gradient stops the launch.
    align None: each array's last element against the page; 16: each 16-byte aligned (the float4,
    cp.async and fragment paths)."""
    wrap = lambda x: emu.guarded(x, align)  # noqa: E731
    if kind == "fp32":
        _fp32(case, be, rng, wrap)
    else:
        _fp16(case, be, wrap)


def test_every_kernel_ran(request):
    """Each kernel of every emulable attention variant ran in some case above (the head dims and
    the variants' own plans decide which instantiations): a plan change that leaves a kernel
    unreached here fails instead of going untested."""
    ran = [r for r in _RESULTS.values()]
    expected = 2 * (len(CASES) + len(FP16_CASES))
    if len(ran) < expected:
        pytest.skip(f"only {len(ran)} of the {expected} emulation cases ran in this session")
    need = {k for v in FWD + BWD for s, k in v.kernels if s.startswith("attention")}
    launched = set().union(*ran)
    assert need <= launched, sorted(need - launched)
