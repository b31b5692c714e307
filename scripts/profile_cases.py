#!/usr/bin/env python3
"""The launches `scripts/gpu_check.sh` profiles with Nsight Compute (its `profile_*` steps).

    ncu --kernel-name regex:"matmul_(cp_async|iter|mma|wgmma)" --section ... python3 scripts/profile_cases.py matmul
    ncu --kernel-name regex:"attn_fwd_tc|flash_fwd" --section ... python3 scripts/profile_cases.py attention
    ncu --kernel-name regex:"attn_fwd_wgmma|attn_bwd_wgmma" --section ... python3 scripts/profile_cases.py hopper

One launch of each, for the questions the docs leave to a GPU:
  matmul     4096^3 NN. fp32 through variant 8 (cp_async, measured in GPU run 1) and 14 (iterators,
             written after it): docs/matmul.md predicts 14 from the SASS alone (the same FFMAs in a
             k-loop that issues 92.3% FFMA where 8's issues 81.4%, ~1.14x if issue slots limit
             both). fp16 through 11 (mma.sync, 43% of cuBLAS in run 1) and 13 (wgmma + TMA, never
             run): docs/matmul_tc.md asks whether the tensor pipe or L2 holds 11.
  attention  fp16 forward, B4 H16 N4096 D128 (the bench case): variant 13 (mma.sync, 0.76x of SDPA's
             flash backend in run 1) and that backend's own kernel (FlashAttention-2, mma.sync
             too) in the same process: where 13 loses the 1.3x (issue slots, stalls, smem, L2).
  hopper     the same shape through the wgmma kernels, never run before: forward 14, 15 (its
             intra-warpgroup overlap) and backward 13, whose predictions in docs/attention_tc.md
             rest on issue-slot arithmetic (forward 14: issue-bound; backward 13: 350-450
             TFLOP/s) that the profile confirms or not.
Each launch's result is compared with a reference on a slice and the difference printed, so a
profile of a wrong kernel does not pass unnoticed. A launch that cannot run here says why; the
others still run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


SKIP: set[str] = set()  # op/key of the variants that failed their tests in this run (--skip)


def _report(name: str, fn, *needs: str) -> None:
    """Run one profiled case: ``fn`` returns its error relative to a reference. ``needs``: the
    op/key of each variant it launches; one that failed its tests in this run is not launched
    (a fault would end the profile of everything after it)."""
    import cupy as cp

    if bad := [q for q in needs if q in SKIP]:
        print(f"{name}: skipped, {', '.join(bad)} failed its tests in this run")
        return
    try:
        err = fn()
        cp.cuda.runtime.deviceSynchronize()
    except Exception as e:
        print(f"{name}: did not run: {type(e).__name__}: {e}")
        return
    print(f"{name}: max difference to the reference, relative to its max: {err:.2e}")


def matmul() -> None:
    import cupy as cp

    import tfm_kernels

    n = 4096
    a32 = cp.random.standard_normal((n, n), dtype=cp.float32)
    b32 = cp.random.standard_normal((n, n), dtype=cp.float32)
    a16, b16 = a32.astype(cp.float16), b32.astype(cp.float16)
    ref = cp.matmul(a16[:64].astype(cp.float32), b16.astype(cp.float32))  # 64 rows, cuBLAS fp32
    ref32 = cp.matmul(a32[:64], b32)

    def run(a, b, variant, r):
        c = tfm_kernels.matmul(a, b, backend="ext", variant=variant)
        return float(cp.abs(c[:64].astype(cp.float32) - r).max() / cp.abs(r).max())

    for variant in ("8_cp_async", "14_iterators"):
        _report(variant, lambda: run(a32, b32, variant, ref32), f"matmul/{variant}")
    for variant in ("11_mma_pipelined", "13_wgmma_persistent"):
        _report(variant, lambda: run(a16, b16, variant, ref), f"matmul/{variant}")


def _attention_case():
    """The bench case B4 H16 N4096 D128 in fp16 (q, k, v), and err(o): the largest difference of o's
    first 64 query rows of (b, h) = (0, 0) from an fp32 reference, relative to its max."""
    import cupy as cp

    B, H, N, D = 4, 16, 4096, 128
    q, k, v = (cp.random.standard_normal((B, H, N, D), dtype=cp.float32).astype(cp.float16) for _ in range(3))
    s = (q[0, 0, :64].astype(cp.float32) @ k[0, 0].astype(cp.float32).T) / D ** 0.5
    p = cp.exp(s - s.max(axis=1, keepdims=True))
    ref = (p / p.sum(axis=1, keepdims=True)) @ v[0, 0].astype(cp.float32)

    def err(o):
        return float(cp.abs(cp.asarray(o)[0, 0, :64].astype(cp.float32) - ref).max() / cp.abs(ref).max())

    return q, k, v, err


def attention() -> None:
    import cupy as cp

    import tfm_kernels

    q, k, v, err = _attention_case()
    _report("13_tc_m128", lambda: err(tfm_kernels.attention_forward(q, k, v, backend="ext",
                                                                     variant="13_tc_m128")[0]),
            "attention_forward/13_tc_m128")

    def sdpa():
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        tq, tk, tv = (torch.from_dlpack(x) for x in (q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        torch.cuda.synchronize()
        return err(cp.from_dlpack(o))

    _report("torch SDPA FLASH_ATTENTION", sdpa)


def hopper() -> None:
    """The wgmma attention kernels (sm_90a), never run before: forward 14 and 15 against the fp32
    reference, backward 13 against backward 12 (mma.sync) on forward 14's o and lse."""
    import cupy as cp

    import tfm_kernels

    q, k, v, err = _attention_case()
    do = cp.random.standard_normal(q.shape, dtype=cp.float32).astype(cp.float16)
    out = {}

    def forward(variant):
        o, lse = tfm_kernels.attention_forward(q, k, v, backend="ext", variant=variant)
        out.setdefault("o", (o, lse))  # forward 14's, for the backward below
        return err(o)

    def backward13():  # the largest gap to backward 12 over dq, dk, dv, relative to 12's max
        o, lse = out.get("o") or tfm_kernels.attention_forward(q, k, v, backend="ext", variant="13_tc_m128")
        want = tfm_kernels.attention_backward(do, q, k, v, o, lse, backend="ext", variant="12_tc_det")
        got = tfm_kernels.attention_backward(do, q, k, v, o, lse, backend="ext", variant="13_wgmma")
        f32 = lambda x: x.astype(cp.float32)  # noqa: E731
        return max(float(cp.abs(f32(g) - f32(w)).max() / cp.abs(f32(w)).max()) for g, w in zip(got, want))

    _report("forward 14_wgmma", lambda: forward("14_wgmma"), "attention_forward/14_wgmma")
    _report("forward 15_wgmma_overlap", lambda: forward("15_wgmma_overlap"), "attention_forward/15_wgmma_overlap")
    _report("backward 13_wgmma (against 12_tc_det)", backward13, "attention_backward/13_wgmma",
            "attention_backward/12_tc_det")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("op", choices=["matmul", "attention", "hopper"])
    ap.add_argument("--skip", action="append", default=[], metavar="OP/KEY",
                    help="a variant that failed its tests: not launched (repeatable)")
    args = ap.parse_args()
    SKIP.update(args.skip)
    {"matmul": matmul, "attention": attention, "hopper": hopper}[args.op]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
