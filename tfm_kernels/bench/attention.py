"""Benchmark cases of attention for ``tfm-kernels bench`` (protocol: core.py).

The FlashAttention benchmark grid: B*N = 16384 tokens, H = 16 heads, N = 512 .. 16384, head dim 64
and 128, causal and not, forward and forward+backward, fp32 and fp16. Throughput is FlashAttention's
formula (``costs.attention_flops``: 4*B*H*N^2*D forward, halved for causal, x3.5 for forward +
backward), so our figures compare directly with the ones published for FlashAttention and with
shared/ANCHORS.md.

Every registered attention variant is timed (the fp32 ones of attention.py and the fp16 tensor-core
ones of attention_tc.py; a variant that does not take a case's dtype or shape is reported n/a, e.g.
naive once B*H*N^2 passes int32). Forward+backward cases are op ``attention_backward``: one call is
a forward (naive for the naive backward, otherwise the default forward for the dtype and shape, as
a training step would run) then the backward variant being timed.

Peers: ``torch.nn.functional.scaled_dot_product_attention`` under ``torch.nn.attention.sdpa_kernel``
with each of its four backends, on the same device buffers (zero-copy through DLPack). The runner
times one peer per case, so each configuration is one case whose peer is the backend our variants
aim at (fp32: EFFICIENT_ATTENTION, torch's only fused fp32 kernel; fp16: FLASH_ATTENTION) plus one
peer-only case per other backend (label suffix ``| SDPA <backend>``; every variant is n/a there, it
was timed in the main case). A backend that refuses a dtype or shape (FLASH and CUDNN take no fp32)
is reported n/a with torch's reason; MATH is skipped past 2**31 score elements (it materializes
them, several times in backward). benchmarks/bench_attention.py turns bench.json into the table of
ratios to every backend.

Verification before timing, on sampled rows of one (batch, head): forward o and lse against a float64
recomputation from the same inputs; forward+backward dq on sampled query rows and dk, dv on sampled
key rows (their sums over all queries use the kernel's lse, itself checked on the sampled rows).
fp32 at the test suite's 1e-5 relative bound; fp16 at 2x the error of the same sampled computation in
float32 math rounded to fp16, plus a 1e-3 floor.
"""

from __future__ import annotations

import math

import numpy as np

from .. import costs
from .core import BenchCase, cuda_torch

TOKENS = 16384
HEADS = 16
FULL_N = (512, 1024, 2048, 4096, 8192, 16384)
# (dtype, mode, head_dim, causal, N): a handful of points for the GPU check's time budget.
# The targets' own cases, the fp16 ones first: under `bench --quick --budget` (scripts/gpu_check.sh)
# the cases past an op's share of the time are skipped, and fp16 forward+backward against
# FlashAttention-2 is the figure the attention issue turns on.
QUICK = (
    ("float16", "fwd_bwd", 128, True, 4096),
    ("float16", "fwd", 128, False, 4096),
    ("float32", "fwd", 128, False, 2048),
    ("float32", "fwd_bwd", 64, True, 1024),
)
SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
PRIMARY = {"float32": "EFFICIENT_ATTENTION", "float16": "FLASH_ATTENTION"}
MATH_MAX_SCORES = 2**31
N_SAMPLE = 8


# --------------------------------------------------------------------------------------------------
# Sampled float64 reference

def _sample(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, N_SAMPLE).astype(np.int64))


def _row_stats(q_rows, k, rows, causal, scale, dt):
    """Scores, probabilities and lse of the given query rows of one head, in dtype dt."""
    s = (q_rows.astype(dt) @ k.astype(dt).T) * dt(scale)
    if causal:
        s = np.where(np.arange(k.shape[0])[None, :] <= rows[:, None], s, -np.inf)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m)
    l = p.sum(-1, keepdims=True)
    return s, p / l, (m + np.log(l))[:, 0]


def _ref_forward(h, rows, causal, scale, dt):
    q, k, v = h["q"], h["k"], h["v"]
    _, p, lse = _row_stats(q[rows], k, rows, causal, scale, dt)
    return p @ v.astype(dt), lse


def _ref_backward(h, rows, keys, causal, scale, dt):
    """dq at query rows, dk and dv at key rows, from the inputs and the kernel's o and lse."""
    q, k, v, do, o, lse = (h[x].astype(dt) for x in ("q", "k", "v", "do", "o", "lse"))
    _, p, _ = _row_stats(q[rows], k, rows, causal, scale, dt)
    dp = do[rows] @ v.T
    ds = p * (dp - np.sum(do[rows] * o[rows], -1, keepdims=True))
    dq = dt(scale) * ds @ k
    # Columns `keys` of P and dS over every query row, P from the kernel's lse.
    st = (q @ k[keys].T) * dt(scale)                                     # (N, keys)
    if causal:
        st = np.where(keys[None, :] <= np.arange(q.shape[0])[:, None], st, -np.inf)
    pc = np.exp(st - lse[:, None])
    dv = pc.T @ do
    dsc = pc * (do @ v[keys].T - np.sum(do * o, -1)[:, None])
    dk = dt(scale) * dsc.T @ q
    return dq, dk, dv


def _verdict(outs, refs, bases, reduction):
    from ..check import fp32_rule, lowprec_rule

    msgs = []
    for name, out, ref, base in zip(("o/dq", "lse/dk", "dv"), outs, refs, bases):
        rule = fp32_rule(reduction=reduction, rtol=1e-5) if base is None else lowprec_rule(base, floor=1e-3)
        ok, mx, tol = rule(out, ref)
        if not ok:
            msgs.append(f"{name}: max err {mx:.3e} > tol {tol:.3e}")
    return "; ".join(msgs) or None


# --------------------------------------------------------------------------------------------------
# Cases

def _forward_variant_for(backward_number: int, dtype: str, **info):
    """The forward paired with a backward variant in a forward+backward case: naive with naive, a
    Hopper (wgmma) backward with the wgmma forward (the whole sm_90a path, timed as one), otherwise
    the default forward for the dtype and shape (what a user's training step runs)."""
    from .._registry import choose, get, variants

    if backward_number == 1:
        return choose("attention_forward", 1, dtype=dtype, **info).key
    if get("attention_backward", backward_number).name.startswith("wgmma"):
        fwd = [v for v in variants("attention_forward") if v.name == "wgmma"]
        if fwd and not fwd[0].reason_unsupported(dtype=dtype, **info):
            return fwd[0].key
    return choose("attention_forward", None, dtype=dtype, **info).key


def _sdpa_probe(torch, backend: str, dtype: str, D: int, causal: bool, grad: bool) -> str | None:
    """None when the SDPA backend runs this dtype/head dim, else torch's reason (a tiny call)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import warnings

    tdt = getattr(torch, dtype)
    x = torch.randn(1, 2, 128, D, device="cuda", dtype=tdt, requires_grad=grad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel(getattr(SDPBackend, backend)):
                y = torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=causal)
                if grad:
                    y.sum().backward()
            torch.cuda.synchronize()
            return None
        except Exception as e:
            # torch raises "No available kernel. Aborting execution." and gives the reasons as
            # UserWarnings ("Expected query, key and value to all be of dtype: {Half, BFloat16}...");
            # keep those, minus the "kernel not used because:" / "runtime disabled" boilerplate of the
            # backends that were not asked for.
            why = []
            for w in caught:
                msg = " ".join(str(w.message).split(" (Triggered internally")[0].split())
                if msg and "not used because" not in msg and "runtime disabled" not in msg and msg not in why:
                    why.append(msg)
            return ("; ".join(why) or " ".join(str(e).split()))[:300]


def _case(dtype: str, mode: str, D: int, causal: bool, N: int, torch, sdpa: str, primary: bool):

    from ..attention import attention_backward, attention_forward

    B, H = TOKENS // N, HEADS
    scale = 1.0 / math.sqrt(D)
    grad = mode == "fwd_bwd"
    op = "attention_backward" if grad else "attention_forward"
    item = np.dtype(dtype).itemsize
    footprint = (B * H * N * D * item) * (9 if grad else 4) + B * H * N * 4

    def make_inputs():
        import cupy as cp

        shape = (B, H, N, D)
        d = {x: cp.random.standard_normal(shape, dtype=cp.float32).astype(dtype) for x in ("q", "k", "v")}
        d["o"] = cp.empty(shape, dtype)
        d["lse"] = cp.empty((B, H, N), cp.float32)
        if grad:
            d["do"] = cp.random.standard_normal(shape, dtype=cp.float32).astype(dtype)
            d["grads"] = tuple(cp.empty(shape, dtype) for _ in range(3))
        if torch is not None:
            d["t"] = {x: torch.from_dlpack(d[x]) for x in ("q", "k", "v") + (("do",) if grad else ())}
        return d

    def run(inp, backend, variant):
        if not primary:
            raise ValueError(f"variant: this case times the SDPA {sdpa} peer only; variants are timed in "
                             f"the case labelled without '| SDPA'")
        if not grad:
            return attention_forward(inp["q"], inp["k"], inp["v"], causal, backend=backend, variant=variant,
                                     out=(inp["o"], inp["lse"]))
        number = int(variant.split("_")[0])
        fwd = _forward_variant_for(number, dtype, batch=B, heads=H, seqlen_q=N, seqlen_k=N, head_dim=D,
                                   causal=causal)
        o, lse = attention_forward(inp["q"], inp["k"], inp["v"], causal, backend=backend, variant=fwd,
                                   out=(inp["o"], inp["lse"]))
        grads = attention_backward(inp["do"], inp["q"], inp["k"], inp["v"], o, lse, causal, backend=backend,
                                   variant=variant, out=inp["grads"])
        return (o, lse) + tuple(grads)

    def verify(inp, out):
        import cupy as cp

        b, h = B // 2, H - 1
        head = {x: cp.asnumpy(inp[x][b, h]) for x in ("q", "k", "v")}
        rows = _sample(N)
        o, lse = cp.asnumpy(out[0][b, h]), cp.asnumpy(out[1][b, h])
        low = dtype != "float32"
        ref = _ref_forward(head, rows, causal, scale, np.float64)
        base = [None, None]
        if low:
            bo, bl = _ref_forward(head, rows, causal, scale, np.float32)
            base = [bo.astype(dtype), bl]
        why = _verdict((o[rows], lse[rows]), ref, base, 1)
        if why or not grad:
            return why
        head.update(do=cp.asnumpy(inp["do"][b, h]), o=o, lse=lse)
        dq, dk, dv = (cp.asnumpy(g[b, h]) for g in out[2:])
        ref = _ref_backward(head, rows, rows, causal, scale, np.float64)
        base = [None] * 3
        if low:
            base = [x.astype(dtype) for x in _ref_backward(head, rows, rows, causal, scale, np.float32)]
        return _verdict((dq[rows], dk[rows], dv[rows]), ref, base, max(1, N // 64))

    peer = peer_name = None
    if torch is not None:
        peer_name = f"torch SDPA {sdpa}"
        refusal = None
        if sdpa == "MATH" and B * H * N * N > MATH_MAX_SCORES:
            refusal = (f"skipped: MATH materializes B*H*N^2 = {B * H * N * N} scores "
                       f"(> 2**31), several times in backward")
        else:
            refusal = _sdpa_probe(torch, sdpa, dtype, D, causal, grad)

        def peer(inp):
            if refusal:
                raise ValueError(f"variant: {peer_name} refuses {dtype} D={D}: {refusal}")
            from torch.nn.attention import SDPBackend, sdpa_kernel

            t = inp["t"]
            with sdpa_kernel(getattr(SDPBackend, sdpa)):
                if not grad:
                    return torch.nn.functional.scaled_dot_product_attention(t["q"], t["k"], t["v"],
                                                                            is_causal=causal)
                q, k, v = (t[x].detach().requires_grad_() for x in ("q", "k", "v"))
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                return torch.autograd.grad(y, (q, k, v), t["do"])

    tag = f"{'fwd' if not grad else 'fwd+bwd'} {dtype} D{D}{' causal' if causal else ''}"
    label = f"B{B} H{H} N{N} {tag}" + ("" if primary else f" | SDPA {sdpa}")
    return BenchCase(
        op=op, label=label, series=tag, x=N, x_label="sequence length N (B*N = 16384 tokens, 16 heads)",
        unit="TFLOP/s", work=costs.attention_flops(B, H, N, N, D, causal, mode), footprint=footprint,
        make_inputs=make_inputs, run=run, verify=verify if primary else None,
        peer=peer, peer_name=peer_name)


def cases(quick: bool):
    torch = cuda_torch()
    if quick:
        configs = QUICK
    else:
        configs = [(dt, mode, D, causal, N) for dt in ("float32", "float16") for mode in ("fwd", "fwd_bwd")
                   for D in (64, 128) for causal in (False, True) for N in FULL_N]
    for dtype, mode, D, causal, N in configs:
        yield _case(dtype, mode, D, causal, N, torch, PRIMARY[dtype], primary=True)
        if torch is not None:
            for sdpa in SDPA_BACKENDS:
                if sdpa != PRIMARY[dtype]:
                    yield _case(dtype, mode, D, causal, N, torch, sdpa, primary=False)
