#!/usr/bin/env python3
"""The launches `scripts/gpu_check.sh` profiles with Nsight Compute (its `profile` step).

    ncu --kernel-name regex:"matmul_(cp_async|iter|mma|wgmma)" --section ... python3 scripts/profile_matmul.py

4096^3 NN products, one launch each:
  * fp32 through variant 8 (cp_async, measured in GPU run 1) and 14 (iterators, written after it).
    docs/matmul.md predicts 14 from the SASS alone: the same FFMAs in a k-loop that issues 92.5%
    FFMA where 8's issues 81.4%, so ~1.14x faster if issue slots are what limits both. The profile
    says whether they are: issue slots busy, the FMA pipe, bank conflicts, stall reasons.
  * fp16 through variant 11 (mma.sync, 43% of cuBLAS in run 1) and 13 (wgmma + TMA, never run).
    docs/matmul_tc.md asks what holds 11 at 329 TFLOP/s when its k-loop issues 4 slots per HMMA:
    the tensor pipe, or L2 (64 FLOP per byte moved into shared memory at its 128x128 tile, ~5 TB/s
    at that speed); the profile's L2 and tensor-pipe throughputs answer it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import cupy as cp

    import tfm_kernels

    n = 4096
    a32 = cp.random.standard_normal((n, n), dtype=cp.float32)
    b32 = cp.random.standard_normal((n, n), dtype=cp.float32)
    a16, b16 = a32.astype(cp.float16), b32.astype(cp.float16)
    for a, b, variants in ((a32, b32, ("8_cp_async", "14_iterators")),
                           (a16, b16, ("11_mma_pipelined", "13_wgmma_persistent"))):
        for variant in variants:
            try:
                c = tfm_kernels.matmul(a, b, backend="ext", variant=variant)
                cp.cuda.runtime.deviceSynchronize()
            except Exception as e:  # a variant that cannot run here is reported, the rest still run
                print(f"{variant}: did not run: {type(e).__name__}: {e}")
                continue
            ref = cp.matmul(a[:64].astype(cp.float32), b.astype(cp.float32))  # 64 rows, fp32 cuBLAS
            err = float(cp.abs(c[:64].astype(cp.float32) - ref).max() / cp.abs(ref).max())
            print(f"{variant}: max difference to cupy.matmul on 64 rows, relative to max|C|: {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
