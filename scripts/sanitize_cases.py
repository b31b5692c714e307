#!/usr/bin/env python3
"""One small run of every kernel variant, for compute-sanitizer (scripts/gpu_check.sh).

    compute-sanitizer --tool memcheck  --error-exitcode 99 python3 scripts/sanitize_cases.py
    compute-sanitizer --tool racecheck --error-exitcode 99 python3 scripts/sanitize_cases.py
    compute-sanitizer --tool synccheck --error-exitcode 99 python3 scripts/sanitize_cases.py

Runs every variant, on both backends, once: on the first of its op's quick ``check_cases``
(tfm_kernels/check.py: small, awkward shapes chosen by each op's engineer) that the variant can
take, so an fp16-only variant runs on the first fp16 case; plus the plumbing self-test kernels
(csrc/ext/plumbing_test.cu). CuPy's memory pool is switched off first: the pool
hands out slices of large blocks, and memcheck only sees an out-of-bounds access when it leaves a
real cudaMalloc allocation. The sanitizer's report is the verdict; this script also exits 1 when a
result is wrong, so a kernel that is clean but incorrect still shows.
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()

    import cupy

    cupy.cuda.set_allocator(None)
    from tfm_kernels import _backend, check

    backends = [b for b in (["ext", "cupy"] if args.backend == "both" else [args.backend])
                if b in _backend.available()]
    if not backends:
        print("no backend can run:", _backend.status(), file=sys.stderr)
        return 2
    bad = plumbing(backends)
    rows = check.run_checks(args.op, backends, quick=True, limit=1)
    print(check.format_table(rows))
    bad += sum(r.failed for r in rows if not r.broken)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
