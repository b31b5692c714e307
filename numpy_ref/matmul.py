"""matmul: the reference for csrc/matmul*.cu (op `matmul` in tfm_kernels, same signature).

    C = op(A) @ op(B),  op(X) = X.T if trans_X else X  (the last two axes; a leading batch axis
    is carried through unchanged)

    2-D:  a (M, K) [trans_a: (K, M)],  b (K, N) [trans_b: (N, K)]        -> c (M, N)
    3-D:  a (Bt, M, K) [trans_a: (Bt, K, M)],  b (Bt, K, N) [(Bt, N, K)] -> c (Bt, M, N)

The transposes are strided views (no copy), as the kernels read the transposed operand in place: the
three GEMMs of a linear layer are `x @ W.T` (trans_b), `dY @ W` and `dY.T @ x` (trans_a).

Dtype behaviour (np.matmul semantics): the result dtype is np.result_type(a.dtype, b.dtype) and the
product is computed by np.matmul in that dtype:
  - float64: BLAS dgemm, float64 accumulation. This is the ground truth the kernels are checked
    against (cast the kernel's inputs to float64 and call this).
  - float32: BLAS sgemm, float32 accumulation (blocked, so its error grows ~sqrt(K), not K).
  - float16: NumPy's own non-BLAS loop, which converts each element to float32, accumulates the
    K products in float32 and rounds the sum to float16 once: fp16 storage with fp32 math, the
    same-precision *baseline* of an fp16 tensor-core kernel (pinned by a test: a fp16 accumulator
    would stall at 2048 when summing 4096 ones).
No broadcasting: batch sizes must be equal (a batch of 1 does not stretch).
"""

from __future__ import annotations

import numpy as np

from . import _check


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for 2-D or equal-batch 3-D float arrays; see the module docstring."""
    a = _check.float_array(a, "a", ndim=(2, 3))
    b = _check.float_array(b, "b", ndim=(2, 3))
    trans_a = _check.flag(trans_a, "trans_a")
    trans_b = _check.flag(trans_b, "trans_b")
    if a.ndim != b.ndim:
        raise ValueError(f"b must have the rank of a ({a.ndim}-D), got shape {b.shape}")
    if a.ndim == 3 and a.shape[0] != b.shape[0]:
        raise ValueError(f"b must have a's batch size {a.shape[0]}, got shape {b.shape}")
    opa = np.swapaxes(a, -1, -2) if trans_a else a
    opb = np.swapaxes(b, -1, -2) if trans_b else b
    if opa.shape[-1] != opb.shape[-2]:
        raise ValueError(
            f"inner dimensions differ: op(a) has K={opa.shape[-1]} (a shape {a.shape}, trans_a={trans_a}), "
            f"op(b) has K={opb.shape[-2]} (b shape {b.shape}, trans_b={trans_b})")
    return np.matmul(opa, opb)
