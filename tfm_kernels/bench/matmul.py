"""Benchmark cases of matmul for ``tfm-kernels bench`` (protocol: core.py).

Every registered matmul variant is timed (the fp32 ladder of matmul.py and the fp16 tensor-core
variants of matmul_tc.py alike; a variant that does not take a case's dtype is reported n/a) beside
cuBLAS through ``cupy.matmul`` on the same buffers, so "vs peer" is the percentage of cuBLAS the
issue's targets are stated in. torch.matmul (cuBLAS too, TF32 off by default) is timed beside them
in benchmarks/bench_matmul.py.

Cases (FLOPs: ``costs.matmul_flops``, 2*M*N*K; ceiling: the H200 datasheet peak of the dtype's
units, 67 TFLOP/s fp32 CUDA cores, 990 TFLOP/s dense fp16 tensor cores):
  * square M = N = K: 1024, 2048, 4096, 8192;
  * the Transformer's feed-forward GEMMs, d_model 512 / 1024, ff = 4 * d_model, tokens T = 4096 ..
    32768 (x: T x d, W: ff x d, dY: T x ff):
        x . W^T   (forward)      M = T,  N = ff, K = d    trans_b
        dY . W    (dX)           M = T,  N = d,  K = ff
        X^T . dY  (dW)           M = d,  N = ff, K = T    trans_a
--quick: fp32 1024, 4096, 8192 (the targets are stated at 4096 and 8192), fp16 4096, 8192, and the
three Transformer GEMMs at T = 8192, d = 1024 in fp32.

Slow variants are not timed where one call would take over ~50 ms at their predicted speed (the naive
kernel at 8192^3 would take ~2 s a call): they are reported n/a with that reason. Verification:
8 sampled rows of C (first and last among them, so both edge tiles) against numpy_ref in float64,
fp32 at the test suite's rule (1e-6 * sqrt(K) relative, TF32 at its documented 1e-3), fp16 at 2x
the error of the same rows computed by NumPy from the fp16 inputs in float32 and rounded to fp16.
"""

from __future__ import annotations

import numpy as np

from .. import costs
from .core import BenchCase

SQUARE = (1024, 2048, 4096, 8192)
TOKENS = (4096, 8192, 16384, 32768)
D_MODEL = (512, 1024)
PEAK = {"float32": 67.0, "float16": 990.0}  # TFLOP/s, H200 datasheet (docs/../ANCHORS)

# Predicted fp32 TFLOP/s of the slowest variants on an H200 (docs/matmul.md): a call whose
# predicted time exceeds MAX_CALL_S is skipped (n/a), not timed.
SLOW_TFLOPS = {"1_naive": 0.5, "2_coalesced": 3.0, "3_smem_tiling": 5.0}
MAX_CALL_S = 0.05


def _sample(m: int) -> np.ndarray:
    return np.unique(np.linspace(0, m - 1, 8).astype(np.int64))


def _case(op_label: str, series: str, x: float, x_label: str, dtype: str, M: int, N: int, K: int,
          trans_a: bool, trans_b: bool) -> BenchCase:
    import numpy_ref

    from .. import _registry
    from ..check import fp32_rule, lowprec_rule
    from ..matmul import matmul

    flops = costs.matmul_flops(M, N, K)

    def make_inputs():
        import cupy as cp

        a = cp.random.standard_normal((K, M) if trans_a else (M, K), dtype=cp.float32).astype(dtype)
        b = cp.random.standard_normal((N, K) if trans_b else (K, N), dtype=cp.float32).astype(dtype)
        return {"a": a, "b": b, "out": cp.empty((M, N), dtype=dtype),
                "opa": a.T if trans_a else a, "opb": b.T if trans_b else b, "variant": None}

    def run(inp, backend, variant):
        v = _registry.get("matmul", variant)
        rate = SLOW_TFLOPS.get(v.key)
        if rate and dtype in v.dtypes and flops / (rate * 1e12) > MAX_CALL_S:
            raise ValueError(f"variant: {variant} not timed at {M}x{N}x{K}: ~{flops / rate / 1e12:.1f} s "
                             f"per call at its predicted {rate} TFLOP/s")
        inp["variant"] = variant
        return matmul(inp["a"], inp["b"], trans_a, trans_b, backend=backend, variant=variant, out=inp["out"])

    def peer(inp):
        import cupy as cp

        return cp.matmul(inp["opa"], inp["opb"])

    def verify(inp, out):
        import cupy as cp

        rows = _sample(M)
        if "ref" not in inp:  # once per input set: the sampled rows' float64 product (and baseline)
            opa = cp.asnumpy(inp["opa"][cp.asarray(rows)])      # (8, K)
            opb = cp.asnumpy(inp["opb"])                         # (K, N)
            inp["ref"] = numpy_ref.matmul(opa.astype(np.float64), opb.astype(np.float64))
            inp["base"] = (None if dtype == "float32" else
                           numpy_ref.matmul(opa.astype(np.float32), opb.astype(np.float32)).astype(np.float16))
        got = cp.asnumpy(out[cp.asarray(rows)])
        if dtype == "float32":
            v = _registry.get("matmul", inp["variant"])
            rule = fp32_rule(reduction=K, rtol=v.extra.get("rtol", 1e-6))
        else:
            rule = lowprec_rule(inp["base"])
        ok, mx, tol = rule(got, inp["ref"])
        return None if ok else f"max err {mx:.3e} > tol {tol:.3e} on {len(rows)} sampled rows"

    itemsize = np.dtype(dtype).itemsize
    return BenchCase(
        op="matmul", label=f"{op_label} {'fp32' if dtype == 'float32' else 'fp16'}", series=series,
        x=x, x_label=x_label, unit="TFLOP/s", work=flops,
        footprint=(M * K + K * N + M * N) * itemsize,
        make_inputs=make_inputs, run=run, verify=verify, peer=peer, peer_name="cuBLAS (cupy.matmul)",
        ceiling=PEAK[dtype])


def _square(dtype: str, n: int) -> BenchCase:
    short = "fp32" if dtype == "float32" else "fp16"
    return _case(f"{n}^3", f"{short} square", n, "M = N = K", dtype, n, n, n, False, False)


def _transformer(dtype: str, which: str, tokens: int, d: int) -> BenchCase:
    ff = 4 * d
    short = "fp32" if dtype == "float32" else "fp16"
    M, N, K, ta, tb, name = {
        "fwd": (tokens, ff, d, False, True, "x.W^T"),
        "dx": (tokens, d, ff, False, False, "dY.W"),
        "dw": (d, ff, tokens, True, False, "X^T.dY"),
    }[which]
    return _case(f"{name} T={tokens} d={d}", f"{short} {name} d={d}", tokens, "tokens", dtype,
                 M, N, K, ta, tb)


def cases(quick: bool):
    if quick:
        for n in (1024, 4096, 8192):
            yield _square("float32", n)
        for n in (4096, 8192):
            yield _square("float16", n)
        for which in ("fwd", "dx", "dw"):
            yield _transformer("float32", which, 8192, 1024)
        return
    for dtype in ("float32", "float16"):
        for n in SQUARE:
            yield _square(dtype, n)
        for d in D_MODEL:
            for which in ("fwd", "dx", "dw"):
                for t in TOKENS:
                    yield _transformer(dtype, which, t, d)


# ---------------------------------------------------------------------------------------------
# The ladder table: generated from a bench.json, never typed
# ---------------------------------------------------------------------------------------------

def ladder_table(result: dict, source: str = "") -> str:
    """Markdown: one table per dtype, a row per variant (and cuBLAS), a column per case, each cell
    "TFLOP/s (percent of cuBLAS)"; from the JSON `tfm-kernels bench` writes."""
    env = result.get("env", {})
    dev = env.get("device", {})
    ms = [m for m in result.get("measurements", []) if m["op"] == "matmul" and m["kind"] != "ceiling"]
    lines = [f"# matmul on {dev.get('name', '?')}: TFLOP/s (percent of cuBLAS)", "",
             f"{env.get('date')}, commit {env.get('commit') or 'unrecorded'}, CUDA runtime "
             f"{env.get('cuda_runtime')}, CuPy {env.get('cupy')}; backend {', '.join(result.get('backends', []))}; "
             f"{'--quick, ' if result.get('quick') else ''}CUDA events, median of "
             f"{max((m.get('repeats') or 0) for m in ms) if ms else 0} calls."
             + (f" Source: {source}." if source else ""), "",
             "Peer: cuBLAS through `cupy.matmul` on the same buffers. n/a: the variant does not take "
             "the dtype, or (variants 1-3) one call would take over 50 ms.", ""]
    for short in ("fp32", "fp16"):
        sub = [m for m in ms if m["label"].endswith(short)]
        if not sub:
            continue
        cases = list(dict.fromkeys(m["label"] for m in sub))
        whos = list(dict.fromkeys(m["who"] for m in sub if m["kind"] == "peer"))
        whos += list(dict.fromkeys(m["who"] for m in sub if m["kind"] == "variant"))
        rows = []
        for who in whos:
            cells = []
            for c in cases:
                m = next((x for x in sub if x["who"] == who and x["label"] == c), None)
                if m is None or m.get("throughput") is None:
                    st = (m or {}).get("status", "")
                    cells.append("WRONG" if st.startswith("WRONG") else "error" if st.startswith("error") else "n/a")
                elif m["kind"] == "peer":
                    cells.append(f"{m['throughput']:.1f}")
                else:
                    cells.append(f"{m['throughput']:.1f} ({100 * m['vs_peer']:.0f}%)" if m.get("vs_peer")
                                 else f"{m['throughput']:.1f}")
            if any(x != "n/a" for x in cells):
                rows.append(f"| {who} | " + " | ".join(cells) + " |")
        lines += [f"## {short}", "", "| variant | " + " | ".join(c[: -len(short)].strip() for c in cases) + " |",
                  "|---|" + "---:|" * len(cases)] + rows + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m tfm_kernels.bench.matmul BENCH_JSON   (prints the ladder table)")
    with open(sys.argv[1]) as f:
        print(ladder_table(json.load(f), source=sys.argv[1]))
