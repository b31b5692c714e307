"""tests/test_attention_tc.py: the fp16 tensor-core attention variants (csrc/attention_tc.cu and,
for Hopper, csrc/attention_sm90.cu; registered by tfm_kernels/attention_tc.py as forward 10, 13, 14,
15 and backward 11, 12, 13, 14).

No GPU needed:
* the registry: numbered, fp16-only, every kernel a variant may launch is exported by its source,
  shared memory within the H200's 227 KB per block;
* (the kernels themselves run on the CPU in tests/test_attention_emulation.py: the host emulation
  of csrc/, ldmatrix/mma.sync/wgmma from the PTX ISA's layouts;)
* NVRTC compiles every instantiation; the PTX holds mma.sync m16n8k16 with f32 accumulators,
  ldmatrix (plain and .trans) and cp.async; the nvcc-built SASS holds HMMA and LDSM (HGMMA for
  forward 14, 15 and backward 13, and backward 13's float2 reductions), read with cuobjdump.
GPU (the `backend` fixture: "ext" and "cupy"): every variant above against numpy_ref
in float64 from the same fp16 inputs, over L in {1, 17, 64, 97, 200, 1025}, Lq != Lk, causal on and
off, kv_lens including 0 and 1, head dims 32/64/96/128 and a large B*H; o, lse, dq, dk, dv checked
separately, outputs NaN-poisoned before each launch. Tolerance (helpers.assert_close_lowprec): the
kernel's error <= 2x the error of a NumPy baseline that does the same computation from the same fp16
inputs in fp32, rounding to fp16 where the kernel rounds (P before P V, dS before dS K / dS^T Q,
the outputs), + 1e-3 x max|ref| (about 2 fp16 ulps at the tensor's scale: the kernel and the
baseline sum in different orders, so their roundings of the same value can differ by one ulp).
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest

import numpy_ref
import tfm_kernels
from helpers import POISON, assert_close_lowprec, ext_sass
from tfm_kernels import _backend
from tfm_kernels import attention_tc as tc

FWD = [v for v in tfm_kernels.variants("attention_forward") if v.number >= 10]
BWD = [v for v in tfm_kernels.variants("attention_backward") if v.number >= 10]
FLOOR = 1e-3
H200_SMEM = 227 * 1024


# ---------------------------------------------------------------------------------------------
# Registry, no GPU
# ---------------------------------------------------------------------------------------------

def test_registered():
    assert [v.number for v in FWD] == [10, 13, 14, 15] and [v.number for v in BWD] == [11, 12, 13, 14]
    for v in FWD + BWD:
        assert v.dtypes == ("float16",) and v.description and v.hot, v.qualname
        for source, name in v.kernels:
            assert name in set(_backend.exports(source)), f"{v.qualname}: {source} lacks {name}"
        assert v.reason_unsupported(dtype="float16", head_dim=80) is not None
        dims = tc.WGMMA_HEAD_DIMS if v.arch == 90 else tc.HEAD_DIMS
        for d in dims:
            assert v.reason_unsupported(dtype="float16", head_dim=d) is None
        for d in set(tc.HEAD_DIMS) - set(dims):
            assert "wgmma" in v.reason_unsupported(dtype="float16", head_dim=d), v.qualname
    wg, wgb = FWD[2], BWD[2]
    for v in (wg, FWD[3], wgb, BWD[3]):
        assert v.arch == 90 and v.extra.get("opt_in"), f"{v.qualname} stays opt-in until seen passing on a GPU"
    assert {s for s, _ in wg.kernels} == {s for s, _ in FWD[3].kernels} == {tc.SOURCE_SM90}
    # backward 13 shares 11's preprocessing and conversion passes (attention_tc.cu); 14 the
    # preprocessing only, and 13's dK/dV kernel without its dQ part
    assert {n for s, n in wgb.kernels if s == tc.SOURCE_SM90} == {tc.wgmma_bwd_kernel(d) for d in tc.WGMMA_HEAD_DIMS}
    assert {n for s, n in wgb.kernels if s == tc.SOURCE} <= {n for _, n in BWD[0].kernels}
    assert {n for s, n in BWD[3].kernels if s == tc.SOURCE_SM90} == {
        f(d) for d in tc.WGMMA_HEAD_DIMS for f in (lambda d: tc.wgmma_bwd_kernel(d, False), tc.wgmma_dq_kernel)}
    assert _backend.source_arch(open(_backend.csrc_dir() / tc.SOURCE_SM90).read()) == "sm_90a"


@pytest.mark.parametrize("D", tc.HEAD_DIMS)
def test_smem_fits(D):
    sizes = [tc.fwd_smem(D), tc.fwd_smem(D, 13), tc.bwd_smem(D, True), tc.bwd_smem(D, False),
             tc.dq_smem(D)] + ([tc.wgmma_smem(D), tc.wgmma_smem(D, True), tc.wgmma_bwd_smem(D), tc.wgmma_dq_smem(D)] if D in tc.WGMMA_HEAD_DIMS else [])
    for nbytes in sizes:
        assert 0 < nbytes <= H200_SMEM, (D, nbytes)


# ---------------------------------------------------------------------------------------------
# Build: NVRTC PTX
# ---------------------------------------------------------------------------------------------

def test_nvrtc_ptx_tensor_cores():
    """Every instantiation compiles under NVRTC; each mma kernel's PTX is built from mma.sync
    m16n8k16 (f32 accumulate), ldmatrix x4 (.trans for V_j / dO_i / Q_i / K_j as B of a k-over-rows
    product) and cp.async."""
    from test_matmul_tc import _nvrtc_ptx  # the one NVRTC-to-PTX helper of the test suite

    names = sorted({n for v in FWD + BWD for s, n in v.kernels if s == tc.SOURCE})
    bodies = _nvrtc_ptx(tc.SOURCE, names, "compute_90")
    for name, body in bodies.items():
        if "dot" in name or "convert" in name:
            continue
        assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in body, name
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in body, name
        assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in body, name
        assert "cp.async.cg.shared.global" in body, name


def _atomic(ptx_line: str) -> bool:
    """A PTX red/atom instruction (optionally predicated); not "ld.shared..." ("red." inside)."""
    return re.match(r"\s*(@!?%p\d+\s+)?(red|atom)\.", ptx_line) is not None


def test_nvrtc_ptx_wgmma():
    """sm_90a: forward 14 (and 15) issues wgmma m64n128k16 with both operands from smem descriptors (S) and
    m64n{D}k16 with A from registers and B transposed (P V), and fences the async proxy. Backward
    13: m64n{BM}k16 from smem (S^T, dP^T: both K-major), m64n64k16 for dQ (both transposed),
    m64n{D}k16 with A from registers and B transposed (dV, dK), float2 atomics into dQ. Backward
    14: the same dK/dV kernel without atomics, and a dQ kernel of S, dP and dS K products, no atomics."""
    from test_matmul_tc import _nvrtc_ptx

    names = [tc.wgmma_kernel(d, overlap) for overlap in (False, True) for d in tc.WGMMA_HEAD_DIMS]
    bwd = [tc.wgmma_bwd_kernel(d) for d in tc.WGMMA_HEAD_DIMS]
    det = [tc.wgmma_bwd_kernel(d, False) for d in tc.WGMMA_HEAD_DIMS]
    dqk = [tc.wgmma_dq_kernel(d) for d in tc.WGMMA_HEAD_DIMS]
    bodies = _nvrtc_ptx(tc.SOURCE_SM90, names + bwd + det + dqk, "compute_90a")
    for d, name in zip(2 * tc.WGMMA_HEAD_DIMS, names):
        body = bodies[name]
        assert "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16" in body, name
        pv = [ln for ln in body.splitlines() if f"wgmma.mma_async.sync.aligned.m64n{d}k16" in ln]
        assert pv, name
        assert "fence.proxy.async.shared::cta" in body and "wgmma.wait_group" in body, name
    for d, name in zip(tc.WGMMA_HEAD_DIMS, bwd):
        lines = bodies[name].splitlines()
        bm = tc.WGMMA_BWD_BM[d]

        def ss(n):  # both operands from shared memory (no register A list)
            return [ln for ln in lines if f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16" in ln and "{%r" not in ln]

        rs = [ln for ln in lines if f"wgmma.mma_async.sync.aligned.m64n{d}k16.f32.f16.f16" in ln and "{%r" in ln]
        # S^T, dP^T: m64n{BM}, D/16 k-steps each; dQ: m64n64, 8 k-steps (128 keys); dV, dK: BM/16 each
        assert len(ss(bm)) == 2 * (d // 16) + (8 if bm == 64 else 0), (name, len(ss(bm)))
        dq = [ln for ln in ss(64) if ln.rstrip(";").replace(" ", "").endswith("1,1,1,1,1")]
        assert len(dq) == 8, f"{name}: {len(dq)} transposed (dQ) wgmmas, not 8"
        assert len(rs) == 2 * (bm // 16), (name, len(rs))
        assert any(_atomic(ln) and ".v2.f32" in ln for ln in lines), f"{name}: no float2 atomics"
        assert "fence.proxy.async.shared::cta" in bodies[name], name
    for d, name, dname in zip(tc.WGMMA_HEAD_DIMS, det, dqk):
        assert not any(_atomic(ln) for ln in bodies[name].splitlines()), f"{name}: atomics in backward 14's dK/dV kernel"
        lines = bodies[dname].splitlines()
        bn = tc.WGMMA_DQ_BN[d]
        ss = [ln for ln in lines if f"wgmma.mma_async.sync.aligned.m64n{bn}k16.f32.f16.f16" in ln and "{%r" not in ln]
        rs = [ln for ln in lines if f"wgmma.mma_async.sync.aligned.m64n{d}k16.f32.f16.f16" in ln and "{%r" in ln]
        assert len(ss) == 2 * (d // 16) and len(rs) == bn // 16, (dname, len(ss), len(rs))  # S, dP; dQ
        assert not any(_atomic(ln) for ln in lines), f"{dname}: atomics"


def test_sass_tensor_cores():
    """In the nvcc-built extension's SASS (cuobjdump, which the test extra installs): every mma
    kernel of forward 10 and backward 11/12 runs HMMA.16816.F32 fed by LDSM (ldmatrix) and LDSM.MT
    (.trans), and forward 14's kernels run HGMMA on the warpgroup tensor cores. A kernel that
    compiled its tensor-core path away (a template slip, an #if on the wrong arch) fails here
    without a GPU."""
    sass = ext_sass()  # skips without cuobjdump or the extension
    mma = {n: s for n, s in sass.items() if n.startswith(("_Z11attn_fwd_tc", "_Z11attn_bwd_tc",
                                                              "_Z14attn_bwd_dq_tc"))}
    names = {n for v in FWD + BWD for src, n in v.kernels if src == tc.SOURCE}
    expected = len([n for n in names if "dot" not in n and "convert" not in n])
    assert len(mma) >= expected, f"{len(mma)} mma kernels in the SASS, {expected} registered"
    for name, body in mma.items():
        assert "HMMA.16816.F32" in body, f"{name}: no HMMA.16816.F32"
        assert "LDSM.16.M88.4" in body and "LDSM.16.MT88.4" in body, f"{name}: no LDSM / LDSM.MT"
    wg = {n: s for n, s in sass.items() if n.startswith("_Z14attn_fwd_wgmma")}
    assert len(wg) == 2 * len(tc.WGMMA_HEAD_DIMS), sorted(wg)  # forward 14 and 15
    for name, body in wg.items():
        assert "HGMMA.64x128x16.F32" in body, f"{name}: no HGMMA.64x128x16.F32 (the S = Q K^T product)"
    wgb = {n: s for n, s in sass.items() if n.startswith("_Z14attn_bwd_wgmma")}
    assert len(wgb) == 2 * len(tc.WGMMA_HEAD_DIMS), sorted(wgb)  # with (13) and without (14) atomics
    for name, body in wgb.items():
        assert "HGMMA.64x" in body, f"{name}: no HGMMA"
        atomic = "ELb1E" in name  # the bool template argument
        assert ("REDG.E.ADD.F32x2" in body) == atomic, f"{name}: float2 dQ reductions iff 13's kernel"
        if atomic:
            assert "HGMMA.64x64x16.F32" in body, f"{name}: no HGMMA.64x64x16.F32 (the dQ product)"
    dq = {n: s for n, s in sass.items() if n.startswith("_Z17attn_bwd_dq_wgmma")}
    assert len(dq) == len(tc.WGMMA_HEAD_DIMS) and all("HGMMA" in s and "RED" not in s for s in dq.values()), sorted(dq)


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


def _skip_unsupported(op, variant, D, backend):
    v = tfm_kernels.variants(op)
    v = next(x for x in v if x.key == variant)
    why = v.reason_unsupported(dtype="float16", head_dim=D)
    if why:
        pytest.skip(f"{variant}: {why}")
    cc = _backend.get(backend).cc
    if cc < v.arch:
        pytest.skip(f"{variant} needs compute capability {v.arch / 10:.1f}, device has {cc / 10:.1f}")

# (B, H, Lq, Lk, D, causal, kv_lens or None). Every L of the issue, Lq != Lk both ways, each head
# dim with causal on and off, kv_lens with 0 and 1 beside full rows (so a tensor's scale is never
# all-zero), and B*H = 128 heads.
CASES = [
    (1, 2, 1, 17, 64, False, None),
    (2, 2, 1, 200, 32, False, [0, 150]),
    (2, 3, 17, 97, 32, False, [0, 5]),
    (2, 2, 64, 64, 128, True, None),
    (3, 2, 97, 200, 96, False, [0, 1, 200]),
    (3, 1, 200, 17, 64, True, [1, 17, 9]),
    (2, 2, 200, 97, 96, True, None),
    (1, 2, 1025, 1025, 128, True, None),
    (2, 1, 1025, 200, 32, False, [200, 1]),
    (1, 1, 97, 1025, 64, False, [1000]),
    (2, 1, 1025, 64, 64, True, [0, 64]),
    (1, 1, 200, 1025, 128, False, [513]),
    (4, 32, 97, 130, 64, True, None),
]
# Forward only: a row that sees exactly one key has dq = dk = 0 exactly (P = 1, dP = D_i), so the
# gradients' tolerance would have no scale; Lk = 1, and causal with Lq = 1, are such cases.
FWD_ONLY = [
    (1, 2, 1, 1, 64, False, None),
    (2, 1, 1, 17, 32, True, [0, 17]),
    (2, 1, 17, 1, 128, True, None),
]


def _ids(cases):
    return [f"B{b}H{h}-{lq}x{lk}-D{d}-{'causal' if c else 'full'}-{'kv' if kv else 'nokv'}"
            for b, h, lq, lk, d, c, kv in cases]


@functools.lru_cache(maxsize=None)
def _case(B, H, Lq, Lk, D, causal, kv):
    """fp16 inputs, the float64 reference, and the fp32-math NumPy baseline
    (tfm_kernels.attention_tc.fp16_baseline), computed once per case (shared by both backends and
    every variant)."""
    rng = np.random.default_rng([B, H, Lq, Lk, D, int(causal)])
    q, do = (rng.standard_normal((B, H, Lq, D)).astype(np.float16) for _ in range(2))
    k, v = (rng.standard_normal((B, H, Lk, D)).astype(np.float16) for _ in range(2))
    kv_lens = None if kv is None else np.array(kv)
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    ro, rl = numpy_ref.attention_forward(f64(q), f64(k), f64(v), causal, kv_lens)
    # Backward is checked at the reference's own o (rounded to fp16, as a kernel would have it)
    # and lse (fp32), so forward and backward errors are measured separately.
    o16, lse32 = ro.astype(np.float16), rl.astype(np.float32)
    rg = numpy_ref.attention_backward(f64(do), f64(q), f64(k), f64(v), f64(o16), f64(lse32), causal,
                                      kv_lens)
    b_o, b_lse, b_grads = tc.fp16_baseline(q, k, v, do, o16, lse32, causal, kv_lens, 1.0 / np.sqrt(D))
    return dict(q=q, k=k, v=v, do=do, kv_lens=kv_lens, o16=o16, lse32=lse32, ref_o=ro, ref_lse=rl,
                ref_grads=rg, base_o=b_o, base_lse=b_lse, base_grads=b_grads)


def _poisoned(cp, shape, dtype):
    return cp.full(shape, POISON, dtype=dtype)


@pytest.mark.parametrize("case", CASES + FWD_ONLY, ids=_ids(CASES + FWD_ONLY))
@pytest.mark.parametrize("variant", [v.key for v in FWD])
def test_forward(backend, variant, case):
    import cupy as cp

    B, H, Lq, Lk, D = case[:5]
    _skip_unsupported("attention_forward", variant, D, backend)
    c = _case(*case[:6], None if case[6] is None else tuple(case[6]))
    o = _poisoned(cp, (B, H, Lq, D), cp.float16)
    lse = _poisoned(cp, (B, H, Lq), cp.float32)
    got_o, got_lse = tfm_kernels.attention_forward(
        cp.asarray(c["q"]), cp.asarray(c["k"]), cp.asarray(c["v"]), case[5], c["kv_lens"],
        backend=backend, variant=variant, out=(o, lse))
    assert got_o is o and got_lse is lse
    assert_close_lowprec(o, c["ref_o"], c["base_o"], floor=FLOOR, what="o")
    assert_close_lowprec(lse, c["ref_lse"], c["base_lse"], floor=1e-5, what="lse")


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
@pytest.mark.parametrize("variant", [v.key for v in BWD])
def test_backward(backend, variant, case):
    import cupy as cp

    c = _case(*case[:6], None if case[6] is None else tuple(case[6]))
    B, H, Lq, Lk, D = case[:5]
    _skip_unsupported("attention_backward", variant, D, backend)
    out = (_poisoned(cp, (B, H, Lq, D), cp.float16), _poisoned(cp, (B, H, Lk, D), cp.float16),
           _poisoned(cp, (B, H, Lk, D), cp.float16))
    grads = tfm_kernels.attention_backward(
        cp.asarray(c["do"]), cp.asarray(c["q"]), cp.asarray(c["k"]), cp.asarray(c["v"]),
        cp.asarray(c["o16"]), cp.asarray(c["lse32"]), case[5], c["kv_lens"],
        backend=backend, variant=variant, out=out)
    for name, g, r, b in zip(("dq", "dk", "dv"), grads, c["ref_grads"], c["base_grads"]):
        assert_close_lowprec(g, r, b, floor=FLOOR, what=name)


@pytest.mark.parametrize("variant, D", [(12, 96), (14, 128)])
def test_backward_deterministic(backend, variant, D):
    """12 and 14 give bitwise-identical gradients run to run (no float atomics)."""
    import cupy as cp

    _skip_unsupported("attention_backward", tfm_kernels._registry.get("attention_backward", variant).key, D, backend)
    c = _case(2, 2, 200, 97, D, True, None)
    args = [cp.asarray(c[n]) for n in ("do", "q", "k", "v", "o16", "lse32")]
    first = [g.get() for g in tfm_kernels.attention_backward(*args, True, backend=backend, variant=variant)]
    again = [g.get() for g in tfm_kernels.attention_backward(*args, True, backend=backend, variant=variant)]
    for a, b in zip(first, again):
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


def test_forward_is_default_for_fp16(backend):
    """With no variant named, fp16 inputs get the fastest measured tensor-core variants (13, 12)."""
    import cupy as cp

    c = _case(1, 2, 1, 17, 64, False, None)
    o, lse = tfm_kernels.attention_forward(cp.asarray(c["q"]), cp.asarray(c["k"]), cp.asarray(c["v"]),
                                           False, backend=backend)
    assert_close_lowprec(o, c["ref_o"], c["base_o"], floor=FLOOR, what="o")
    from tfm_kernels._registry import choose

    info = dict(batch=1, heads=2, seqlen_q=1, seqlen_k=17, head_dim=64, causal=False)
    assert choose("attention_forward", None, dtype="float16", **info).number == 13
    assert choose("attention_backward", None, dtype="float16", **info).number == 12


def test_bench_pairs_each_backward_with_its_forward():
    """A forward+backward benchmark case times backward 13 (wgmma) after forward 14 (wgmma): the
    sm_90a path as a whole; the mma.sync backwards after the default forward."""
    from tfm_kernels.bench.attention import _forward_variant_for

    info = dict(batch=4, heads=16, seqlen_q=4096, seqlen_k=4096, head_dim=128, causal=True)
    assert _forward_variant_for(13, "float16", **info) == _forward_variant_for(14, "float16", **info) \
        == FWD[2].key == "14_wgmma"
    assert _forward_variant_for(12, "float16", **info) == _forward_variant_for(11, "float16", **info) == "13_tc_m128"
