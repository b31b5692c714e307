"""Headline results table from a `tfm-kernels bench` JSON: for every case, the fastest variant,
the fastest peer measured in the same run, their ratio, and the ceiling.

    python scripts/results_table.py benchmarks/results/h200/bench.json [--summary summary.json]
    python scripts/results_table.py --variants          # the registry: every variant and its status

Prints Markdown. The README's results and variants sections are this script's output, written
between the `<!-- results:begin/end -->` and `<!-- variants:begin/end -->` markers by
`--readme README.md`, never typed.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import OrderedDict


def _fmt(x: float, unit: str) -> str:
    if unit.startswith("GB"):
        return f"{x / 1000:.2f} TB/s"
    return f"{x:.1f} {unit}"


def _opt_in() -> set[str]:
    """Variants that change the precision contract (TF32): never "best" against an fp32 peer."""
    try:
        import tfm_kernels
        return {v.qualname for op in tfm_kernels.ops() for v in tfm_kernels.variants(op)
                if v.extra.get("opt_in")}
    except Exception:  # the table still renders from the JSON alone
        return set()


def table(bench: dict) -> str:
    opt_in = _opt_in()
    cases: "OrderedDict[tuple, list]" = OrderedDict()
    for m in bench["measurements"]:
        if m.get("status") != "ok" or m.get("throughput") is None:
            continue
        label = m["label"].split(" | ")[0]  # peer-only rows ("... | SDPA CUDNN") join their case
        cases.setdefault((m["op"], label), []).append(m)
    rows = ["| op | case | best variant | figure | best peer | peer figure | ratio | % of ceiling |",
            "|---|---|---|---:|---|---:|---:|---:|"]
    for (op, label), ms in cases.items():
        variants = [m for m in ms if m["kind"] == "variant" and f"{op}/{m['who']}" not in opt_in]
        peers = [m for m in ms if m["kind"] == "peer"]
        if not variants:
            continue
        best = max(variants, key=lambda m: m["throughput"])
        unit = best["unit"]
        who = f"{best['who']} ({best['backend']})" if best.get("backend") else best["who"]
        if peers:
            peer = max(peers, key=lambda m: m["throughput"])
            pfig, pwho = _fmt(peer["throughput"], unit), peer["who"]
            ratio = f"{best['throughput'] / peer['throughput']:.2f}x"
        else:
            pfig = pwho = ratio = ""
        pct = f"{best['pct_ceiling']:.0f}%" if best.get("pct_ceiling") is not None else ""
        rows.append(f"| {op} | {label} | {who} | {_fmt(best['throughput'], unit)} | {pwho} | {pfig} "
                    f"| {ratio} | {pct} |")
    return "\n".join(rows)


def header(summary: dict | None, bench: dict, commit: str | None = None) -> str:
    if not summary:
        return ""
    s = dict(summary, commit=commit or summary.get("commit"))
    parts = [f"{s.get('gpu')}", f"driver {s.get('driver_version')}", f"CUDA runtime {s.get('cuda_runtime')}",
             f"CuPy {s.get('cupy')}", f"torch {s.get('torch')}", f"commit {s.get('commit')}", f"{s.get('date')}"]
    copy = bench.get("copy_gbs")
    line = "Measured on " + ", ".join(parts)
    if copy:
        line += f"; measured copy bandwidth {copy / 1000:.2f} TB/s"
    return line + (". Opt-in variants (TF32) are left out of \"best\"; see the op's page.\n\n")


def variants_table() -> str:
    """Every registered variant: dtypes, whether the default may pick it, what it changes."""
    import tfm_kernels

    rows = ["| op | variant | dtypes | status | what it changes | measured |", "|---|---|---|---|---|---|"]
    for op in tfm_kernels.ops():
        for v in tfm_kernels.variants(op):
            if v.broken:
                status = f"broken: {v.broken}"
            elif v.extra.get("unverified"):
                status = "not yet run on a GPU" + (", opt-in" if v.extra.get("opt_in") else "")
            elif v.extra.get("opt_in"):
                status = "opt-in"
            else:
                status = "default-eligible"
            desc = v.description.replace("|", "/")
            measured = (v.measured or "").replace("|", "/")
            rows.append(f"| {op} | `{v.key}` | {', '.join(v.dtypes)} | {status} | {desc} | {measured} |")
    return "\n".join(rows)


def _replace_block(src: str, name: str, text: str) -> str:
    new, n = re.subn(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)",
                     lambda m: m.group(1) + text + "\n" + m.group(2), src, flags=re.S)
    if n != 1:
        raise SystemExit(f"no <!-- {name}:begin/end --> markers")
    return new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bench_json", nargs="?")
    ap.add_argument("--variants", action="store_true", help="print (or write) the registry table")
    ap.add_argument("--summary", help="gpu_check summary.json (GPU, driver, commit, date)")
    ap.add_argument("--commit", help="what the tree was, where the summary could not tell (no .git there)")
    ap.add_argument("--readme", help="replace the results block of this README in place")
    a = ap.parse_args()
    blocks = {}
    if a.bench_json:
        bench = json.load(open(a.bench_json))
        summary = json.load(open(a.summary)) if a.summary else None
        blocks["results"] = header(summary, bench, a.commit) + table(bench)
    if a.variants:
        blocks["variants"] = variants_table()
    if not blocks:
        ap.error("give a bench JSON, --variants, or both")
    if a.readme:
        src = open(a.readme).read()
        for name, text in blocks.items():
            src = _replace_block(src, name, text)
        open(a.readme, "w").write(src)
    else:
        print("\n\n".join(blocks.values()))


if __name__ == "__main__":
    main()
