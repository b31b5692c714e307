#!/usr/bin/env python3
"""What one GPU run says about each registered variant, next to what the registry still claims.

    python scripts/gpu_verdicts.py OUTDIR/summary.json [--junit OUTDIR/junit.xml] [--json]
    python scripts/gpu_verdicts.py --failed --check WORKDIR/check.json --junit-dir WORKDIR/junit

Reads what `scripts/gpu_check.sh` writes: summary.json (its `check` rows, from `tfm-kernels check
--quick`, every variant on both backends; its `test_failures`; its `bench` rows) and junit.xml
(every test case; by default the one beside the summary). Prints one row per variant of
`tfm_kernels.variants(op)`:

    verdict   passed      on both backends a check row passed or a passed GPU test names the
                          variant, and nothing that names it failed
              FAILED      a check row failed, or a failed test names the variant
              not run     nothing ran it on one backend or both (absent from the run's code, not
                          applicable to the GPU, or cut by a time budget)
    action    what the registry should say now: "clear unverified" for a variant marked unverified
              that passed; "fix (or mark broken)" for a failure; nothing otherwise.

A test names a variant when its id has the variant's key as a word ("12_wgmma_tma", never "2_flash"
inside "12_flash"); for an op with a forward and a backward (softmax, attention), a test counts for
the backward op only if its name says "backward", and for the forward op only if it does not.
`scripts/gpu_check.sh` appends this table to summary.md, so the session that fetched a run sees
which `extra["unverified"]` marks it can clear without reading the logs. Before that, between its
tests and its benchmarks, it asks ``--failed`` (from check.json and every pass's junit, before any
summary exists) which variants failed, one ``op/key`` per line, and skips those in the benchmarks
and profiles: a kernel that faults there would lose the CUDA context and every figure after it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEST_FILES = {"softmax": ("test_softmax",), "softmax_backward": ("test_softmax",),
              "matmul": ("test_matmul", "test_matmul_tc"),
              "attention_forward": ("test_attention", "test_attention_tc"),
              "attention_backward": ("test_attention", "test_attention_tc")}
PAIRED = {"softmax", "softmax_backward", "attention_forward", "attention_backward"}
BACKENDS = ("ext", "cupy")


def _for_op(op: str, file: str, test: str) -> bool:
    """Whether test `test` (its function name and id) of `file` speaks for `op`."""
    if file not in TEST_FILES[op]:
        return False
    if op in PAIRED:
        return ("backward" in test.split("[")[0]) == op.endswith("_backward")
    return True


def junit_cases(path: Path | None) -> list[dict]:
    """[{file, test, backend, ok}] for every test case of a junit.xml (none if it is absent)."""
    if path is None or not path.exists():
        return []
    out = []
    for c in ET.parse(path).iter("testcase"):
        file = c.get("classname", "").split(".")[1] if "." in c.get("classname", "") else c.get("classname", "")
        name = c.get("name", "")
        m = re.match(r"[^\[]*\[(ext|cupy)-", name)
        tags = {ch.tag for ch in c}
        if "skipped" in tags:
            continue
        out.append({"file": file, "test": name, "backend": m.group(1) if m else None,
                    "ok": not ({"failure", "error"} & tags)})
    return out


def verdicts(summary: dict, cases: list[dict]) -> list[dict]:
    import tfm_kernels
    from tfm_kernels._registry import names

    check = summary.get("check") or []
    failures = summary.get("test_failures") or []
    bench = summary.get("bench") or []
    rows = []
    for op in TEST_FILES:
        for v in tfm_kernels.variants(op):
            mine = [r for r in check if r["op"] == op and r["variant"] == v.key]
            named = [f for f in failures if "::" in f
                     and _for_op(op, f.split("::")[0], f.split("::")[1]) and names(v.key, f)]
            tests = [c for c in cases if c["backend"] and _for_op(op, c["file"], c["test"]) and names(v.key, c["test"])]
            seen = {}
            for b in BACKENDS:
                rb = [r for r in mine if r["backend"] == b]
                tb = [c for c in tests if c["backend"] == b]
                seen[b] = {"check_passed": sum(r["passed"] for r in rb), "check_failed": sum(r["failed"] for r in rb),
                           "tests_passed": sum(c["ok"] for c in tb), "tests_failed": sum(not c["ok"] for c in tb)}
            failed = named or any(x["check_failed"] or x["tests_failed"] for x in seen.values())
            ran = all(x["check_passed"] or x["tests_passed"] for x in seen.values())
            verdict = "FAILED" if failed else "passed" if ran else "not run"
            figures = [m for m in bench if m.get("op") == op and m.get("who") == v.key and m.get("throughput")]
            best = max(figures, key=lambda m: m["throughput"], default=None)
            unverified = bool(v.extra.get("unverified"))
            action = ("fix (or mark broken)" if verdict == "FAILED"
                      else "clear unverified" if verdict == "passed" and unverified else "")
            rows.append({
                "op": op, "variant": v.key, "unverified": unverified, "opt_in": bool(v.extra.get("opt_in")),
                "seen": seen, "failures": named[:3], "verdict": verdict, "action": action,
                "best": None if best is None else {
                    "label": best["label"], "throughput": best["throughput"], "unit": best["unit"],
                    "vs_peer": best.get("vs_peer")},
            })
    return rows


def head_commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except Exception:
        return None


def markdown(rows: list[dict], summary: dict) -> str:
    run, head = str(summary.get("commit", "?")), head_commit()
    L = [f"## Variant verdicts (scripts/gpu_verdicts.py; commit {run})", ""]
    if head and not run.startswith(head) and not head.startswith(run.split()[0]):
        L += [f"**The run's commit ({run}) is not this checkout's HEAD ({head})**: the rows follow today's "
              "registry, the verdicts describe the code that ran; an action applies only where the "
              "variant's kernels are unchanged since.", ""]
    L += [
          "Per backend: check rows passed/failed, GPU tests naming the variant passed/failed.", "",
          "| op | variant | registry | ext | cupy | verdict | best figure (x peer) | action |",
          "|---|---|---|---|---|---|---|---|"]

    def cell(x):
        return f"check {x['check_passed']}/{x['check_failed']}, tests {x['tests_passed']}/{x['tests_failed']}"

    for r in rows:
        reg = ", ".join(x for x, on in (("unverified", r["unverified"]), ("opt-in", r["opt_in"])) if on) or "-"
        b = r["best"]
        fig = "" if b is None else (f"{b['throughput']:.1f} {b['unit']} {b['label']}"
                                    + (f" ({b['vs_peer']:.2f}x)" if b.get("vs_peer") else ""))
        verdict = r["verdict"] + "".join(f"<br>{f[:100]}" for f in r["failures"])
        L.append(f"| {r['op']} | {r['variant']} | {reg} | {cell(r['seen']['ext'])} | {cell(r['seen']['cupy'])} | "
                 f"{verdict.replace('|', '/')} | {fig} | {r['action']} |")
    return "\n".join(L) + "\n"


def failed_so_far(check_json: Path | None, junit_dir: Path | None) -> list[str]:
    """``op/key`` of every variant a check row or a test has failed, from gpu_check.sh's scratch
    files (check.json; junit/<file>.<pass>.xml, each test by its last pass, and progress/ for a
    pass killed before it wrote its junit: a test running when the cap struck counts as failed)."""
    check = {}
    if check_json is not None and check_json.exists():
        try:
            check = json.loads(check_json.read_text())
        except ValueError:
            check = {}
    cases, failures = [], []
    if junit_dir is not None and junit_dir.is_dir():
        import importlib.util

        spec = importlib.util.spec_from_file_location("gpu_summary", Path(__file__).with_name("gpu_summary.py"))
        gs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gs)
        # a pass killed by its cap left no junit: its progress file (beside junit/) stands in
        merged, _, failures, _ = gs.merge_junit(str(junit_dir), str(junit_dir.parent / "progress"))
        for c in merged:
            if c["status"] in ("passed", "failed") and c["backend"] in BACKENDS:
                cases.append({"file": c["file"], "test": c["test"], "backend": c["backend"],
                              "ok": c["status"] == "passed"})
    rows = verdicts({"check": check.get("rows") or [], "test_failures": failures, "bench": []}, cases)
    return [f"{r['op']}/{r['variant']}" for r in rows if r["verdict"] == "FAILED"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("summary", type=Path, nargs="?", help="summary.json written by scripts/gpu_check.sh")
    ap.add_argument("--junit", type=Path, default=None, help="junit.xml (default: beside the summary)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of Markdown")
    ap.add_argument("--failed", action="store_true",
                    help="print op/key of each failed variant, from --check and --junit-dir")
    ap.add_argument("--check", type=Path, help="with --failed: check.json of tfm-kernels check")
    ap.add_argument("--junit-dir", type=Path, help="with --failed: the directory of the per-pass junit files")
    args = ap.parse_args()
    if args.failed:
        print("\n".join(failed_so_far(args.check, args.junit_dir)))
        return 0
    if args.summary is None:
        ap.error("summary.json is required (or --failed)")
    summary = json.loads(args.summary.read_text())
    rows = verdicts(summary, junit_cases(args.junit or args.summary.parent / "junit.xml"))
    print(json.dumps(rows, indent=1) if args.json else markdown(rows, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
