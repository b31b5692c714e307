#!/usr/bin/env python3
"""One small run of every kernel variant, for compute-sanitizer (scripts/gpu_check.sh).

    python3 scripts/sanitize_cases.py --sanitizer "compute-sanitizer --tool memcheck --error-exitcode 99"
    compute-sanitizer --tool racecheck --error-exitcode 99 python3 scripts/sanitize_cases.py

Runs every variant, on both backends, once: on the first of its op's quick ``check_cases``
(tfm_kernels/check.py: small, awkward shapes chosen by each op's engineer) that the variant can
take, so an fp16-only variant runs on the first fp16 case; plus the plumbing self-test kernels
(csrc/ext/plumbing_test.cu). CuPy's memory pool is switched off first: the pool
hands out slices of large blocks, and memcheck only sees an out-of-bounds access when it leaves a
real cudaMalloc allocation. The sanitizer's report is the verdict; this script also exits 1 when a
result is wrong, so a kernel that is clean but incorrect still shows.

With ``--sanitizer CMD`` this process only drives: it runs the cases under ``CMD`` in child
processes (``tfm_kernels.check.run_isolated``). The variants seen passing on a GPU run first; a
fault that loses the CUDA context (what memcheck reports as an error is often such a fault) ends
only its own process, and the variants it kept from running get a fresh one, so one faulting
first-run kernel does not leave the others unchecked. Each child ends with its own
"ERROR SUMMARY"; scripts/gpu_check.sh adds them up. Exit status: 99 when a child's sanitizer
found errors, 2 when nothing ran (no GPU), 1 when a result was wrong or a row could not run, 0
when all is clean.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def plumbing(backends: list[str]) -> int:
    import cupy
    import numpy as np

    from tfm_kernels import _backend
    from tfm_kernels._registry import Launch

    bad = 0
    for name in backends:
        be = _backend.get(name)
        n = 1000
        out = cupy.full(n, cupy.nan, dtype=cupy.float32)
        be.launch(Launch("ext/plumbing_test.cu", "tfm_plumbing_fill<float, 1>", (3, 1, 1), (128, 1, 1),
                         (out, np.int32(n), np.float32(0.5))))
        x = cupy.arange(20000, dtype=cupy.float32)  # 80 KB of dynamic shared memory (> 48 KiB)
        y = cupy.full_like(x, cupy.nan)
        be.launch(Launch("ext/plumbing_test.cu", "tfm_plumbing_smem", (1, 1, 1), (256, 1, 1),
                         (x, y, np.int32(x.size)), smem=x.nbytes))
        ok = bool((out.get() == 0.5 + np.arange(n)).all()) and bool((y.get() == x.get()[::-1]).all())
        print(f"plumbing [{name}]: {'ok' if ok else 'WRONG'}")
        bad += not ok
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=["ext", "cupy", "both"], default="both")
    ap.add_argument("--op", action="append")
    ap.add_argument("--variant", action="append", help="as tfm-kernels check --variant (repeatable)")
    ap.add_argument("--skip", action="append", help="as tfm-kernels check --skip (repeatable)")
    ap.add_argument("--budget", type=float, help="seconds (as tfm-kernels check --budget)")
    ap.add_argument("--json", help="write the rows here (what a driving process reads)")
    ap.add_argument("--sanitizer", help="drive: run the cases under this command, in child processes")
    args = ap.parse_args()

    from tfm_kernels import check

    if args.sanitizer:
        def child(selection, skip, budget, path):
            return [*shlex.split(args.sanitizer), sys.executable, str(Path(__file__).resolve()),
                    *check.child_options(args, selection, skip, budget), f"--json={path}"]

        res = check.run_isolated(child, budget=args.budget)
        rows = check.rows_from_dicts(res["rows"])
        print(f"\n== sanitize_cases: {res['passes']} processes under {args.sanitizer!r}")
        print(check.format_table(rows))
        for e in res["context_lost"]:
            print(f"pass {e['pass']}: " + (f"CUDA context lost after {e['variant']}: {e['error']}"
                                           if "variant" in e else e["error"]))
        if any(c == 99 for c in res["returncodes"]):
            return 99
        if not any(r.passed or r.failed for r in rows):
            print("nothing ran under the sanitizer")
            return 2
        return 1 if any(r.failed and not r.broken or r.lost for r in rows) else 0

    import cupy

    cupy.cuda.set_allocator(None)
    from tfm_kernels import _backend

    backends = [b for b in (["ext", "cupy"] if args.backend == "both" else [args.backend])
                if b in _backend.available()]
    if not backends:
        print("no backend can run:", _backend.status(), file=sys.stderr)
        if args.json:
            Path(args.json).write_text('{"error": "no backend can run", "rows": []}')
        return 2
    bad = plumbing(backends) if args.variant is None else 0  # the plumbing kernels: first pass only
    rows = check.run_checks(args.op, backends, args.variant, quick=True, limit=1, budget=args.budget,
                            skip=args.skip)
    rc = check.report(rows, 0.0, args.json)
    return 1 if bad or rc else 0


if __name__ == "__main__":
    sys.exit(main())
