#!/usr/bin/env python3
"""The launches `scripts/gpu_check.sh` profiles with Nsight Compute (its `profile` step).

    ncu --kernel-name regex:"matmul_(cp_async|iter)" --section ... python3 scripts/profile_matmul.py

One 4096^3 fp32 NN product each through variant 8 (cp_async, measured in GPU run 1) and variant 14
(iterators, written after it). docs/matmul.md predicts 14 from the SASS alone: the same FFMAs in a
k-loop that issues 92.5% FFMA where 8's issues 81.4%, so ~1.14x faster if issue slots are what
limits both. The profile says whether they are: issue slots busy, the FMA pipe's utilisation,
shared-memory bank conflicts and the warp stall reasons, for both kernels in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import cupy as cp

    import tfm_kernels

    n = 4096
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    for variant in ("8_cp_async", "14_iterators"):
        c = tfm_kernels.matmul(a, b, backend="ext", variant=variant)
        cp.cuda.runtime.deviceSynchronize()
        err = float(cp.abs(c[:64] - a[:64] @ b).max() / cp.abs(c[:64]).max())  # cuBLAS on 64 rows
        print(f"{variant}: max relative difference to cupy.matmul on 64 rows {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
