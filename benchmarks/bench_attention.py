"""benchmarks/bench_attention.py: attention variants against torch SDPA's backends, and the table.

Two uses:

    pytest benchmarks/bench_attention.py --benchmark-columns=median,rounds
        pytest-benchmark timings of every attention variant (fp32 and fp16, forward and
        forward+backward) on both backends, beside torch SDPA with each of its FLASH, CUDNN,
        EFFICIENT and MATH backends, at two FlashAttention-grid shapes. Every configuration is
        checked first (the sampled float64 verification of tfm_kernels/bench/attention.py). TFLOP/s
        (costs.attention_flops) goes to each result's extra_info.

    python benchmarks/bench_attention.py table RUN/bench.json > benchmarks/results/attention.md
        the Markdown table of a `tfm-kernels bench --op attention` run: per configuration, each of
        our variants' TFLOP/s and its ratio to every SDPA backend measured in the same run (the
        runner times one peer per case; tfm_kernels/bench/attention.py adds one peer-only case per
        other backend, which this joins back together).

Skipped, with the reason, when no CUDA device is usable.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

SDPA = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


# --------------------------------------------------------------------------------------------------
# The table

def table(bench_json: str) -> str:
    res = json.loads(Path(bench_json).read_text())
    env = res.get("env", {})
    groups: dict[str, dict] = defaultdict(lambda: {"ours": [], "peers": {}, "x": None, "op": None})
    for m in res["measurements"]:
        if not m["op"].startswith("attention"):
            continue
        base = m["label"].split(" | ")[0]
        g = groups[(m["op"], base)]
        g["x"], g["op"], g["series"] = m["x"], m["op"], m["series"]
        if m["kind"] == "variant" and m["throughput"] is not None:
            g["ours"].append((m["who"], m["backend"], m["throughput"]))
        elif m["kind"] == "peer":
            name = m["who"].replace("torch SDPA ", "")
            g["peers"][name] = m["throughput"] if m["throughput"] is not None else m["status"]
    dev = env.get("device", {}).get("name", "unknown GPU") if isinstance(env.get("device"), dict) else env.get("device")
    lines = [f"# Attention vs torch SDPA: {dev}", "",
             f"{env.get('date')}, commit {env.get('commit')}, torch {env.get('torch')}, CuPy {env.get('cupy')}. "
             "TFLOP/s by FlashAttention's formula (4*B*H*N^2*D forward, halved for causal, x3.5 for "
             "forward+backward); CUDA events, median; B*N = 16384 tokens, 16 heads. Ratio = ours / SDPA "
             "backend, measured in the same run.", "",
             "| case | variant | backend | TFLOP/s | " + " | ".join(f"vs {s.split('_')[0].lower()}" for s in SDPA)
             + " |", "|---|---|---|---:|" + "---:|" * len(SDPA)]
    notes = {}
    for (op, base), g in sorted(groups.items(), key=lambda kv: (kv[1]["series"], kv[1]["x"])):
        peer_cells = []
        for s in SDPA:
            p = g["peers"].get(s)
            peer_cells.append(p)
            if isinstance(p, str):
                notes[s + " " + base.split(" ", 3)[-1]] = p.replace("n/a: ", "", 1).replace("variant: ", "", 1)
        if not g["ours"]:
            lines.append(f"| {base} | (none ran) | | | " + " | ".join(
                f"{p:.1f}" if isinstance(p, float) else "n/a" for p in peer_cells) + " |")
            continue
        for who, be, tp in sorted(g["ours"], key=lambda t: -t[2]):
            cells = [(f"{tp / p:.2f}x ({p:.1f})" if isinstance(p, float) and p > 0 else "n/a") for p in peer_cells]
            lines.append(f"| {base} | {who} | {be} | {tp:.1f} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "SDPA backends that did not run (torch's reason):", ""]
        lines += [f"- {k}: {v[:200]}" for k, v in sorted(notes.items())]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# pytest-benchmark

if __name__ != "__main__":  # under pytest (the table command needs only the standard library)
    import pytest

    from tfm_kernels import _backend

    pytest.importorskip("pytest_benchmark")

    # (dtype, mode, head dim, causal, N): one mid-size and one long point.
    CONFIGS = [("float32", "fwd", 128, False, 2048), ("float32", "fwd_bwd", 64, True, 2048),
               ("float16", "fwd", 128, False, 8192), ("float16", "fwd_bwd", 128, True, 8192)]

    def _require(backend=None):
        if why := _backend.unavailable(backend):
            pytest.skip(why)

    def _case(cfg, sdpa, primary):
        from tfm_kernels.bench import attention as ba

        dtype, mode, D, causal, N = cfg
        return ba._case(dtype, mode, D, causal, N, ba._torch(), sdpa, primary)

    def _timed(benchmark, fn, flops):
        import cupy

        fn()
        cupy.cuda.runtime.deviceSynchronize()
        benchmark.pedantic(lambda: (fn(), cupy.cuda.runtime.deviceSynchronize()), rounds=10, iterations=1,
                           warmup_rounds=2)
        benchmark.extra_info["TFLOP/s"] = flops / benchmark.stats.stats.median / 1e12

    def _variant_params():
        from tfm_kernels import variants

        out = []
        for cfg in CONFIGS:
            op = "attention_backward" if cfg[1] == "fwd_bwd" else "attention_forward"
            for v in variants(op):
                if cfg[0] in v.dtypes and not v.broken:
                    for be in ("ext", "cupy"):
                        out.append(pytest.param(cfg, v.key, be, id=f"{cfg[1]}-{cfg[0]}-D{cfg[2]}-N{cfg[4]}"
                                                f"{'-causal' if cfg[3] else ''}-{v.key}-{be}"))
        return out

    @pytest.mark.parametrize("cfg,variant,backend", _variant_params())
    def test_variant(benchmark, cfg, variant, backend):
        _require(backend)
        case = _case(cfg, "EFFICIENT_ATTENTION", True)
        inp = case.make_inputs()
        try:
            out = case.run(inp, backend, variant)
        except ValueError as e:
            if str(e).startswith("variant:"):
                pytest.skip(str(e))
            raise
        why = case.verify(inp, out)
        assert why is None, why
        _timed(benchmark, lambda: case.run(inp, backend, variant), case.work)

    @pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c[1]}-{c[0]}-D{c[2]}-N{c[4]}")
    @pytest.mark.parametrize("sdpa", SDPA)
    def test_sdpa(benchmark, cfg, sdpa):
        _require()
        case = _case(cfg, sdpa, False)
        if case.peer is None:
            pytest.skip("torch with CUDA is not available")
        inp = case.make_inputs()
        try:
            case.peer(inp)
        except ValueError as e:
            pytest.skip(str(e))
        _timed(benchmark, lambda: case.peer(inp), case.work)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "table":
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(table(sys.argv[2]))
