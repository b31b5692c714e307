"""numpy_ref's kernel-facing core (matmul, softmax, log-softmax, attention): against independent
float64 formulas, central finite differences (relative error <= 1e-6) and torch's CPU operators.

The attention blocked-vs-plain equivalence lives in test_ref_attention.py; bad input for the whole
package in test_ref_bad_input.py.
"""

import numpy as np
import pytest

import numpy_ref as R
from numpy_ref.gradcheck import numerical_grad, rel_error

FD_TOL = 1e-6


# ------------------------------------------------------------------------------------------ matmul

@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("batch", [None, 1, 3])
@pytest.mark.parametrize("mkn", [(1, 1, 1), (17, 97, 5), (33, 1, 129), (4, 65, 1)])
def test_matmul_matches_explicit_sum(rng, trans_a, trans_b, batch, mkn):
    M, K, N = mkn
    lead = () if batch is None else (batch,)
    a = rng.standard_normal(lead + ((K, M) if trans_a else (M, K)))
    b = rng.standard_normal(lead + ((N, K) if trans_b else (K, N)))
    c = R.matmul(a, b, trans_a=trans_a, trans_b=trans_b)
    # Independent statement: an einsum over explicitly transposed indices.
    sa = "...km" if trans_a else "...mk"
    sb = "...nk" if trans_b else "...kn"
    ref = np.einsum(f"{sa},{sb}->...mn", a, b)
    assert c.shape == lead + (M, N) and c.dtype == np.float64
    np.testing.assert_allclose(c, ref, rtol=1e-13, atol=1e-13 * np.sqrt(K))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_matmul_keeps_low_precision_dtype(rng, dtype):
    a = rng.standard_normal((2, 9, 31)).astype(dtype)
    b = rng.standard_normal((2, 31, 7)).astype(dtype)
    c = R.matmul(a, b)
    assert c.dtype == dtype
    ref = a.astype(np.float64) @ b.astype(np.float64)
    # fp32: ~1e-7 per add; fp16: ~1e-3 per add: bounded by eps * K * max|a||b| with room to spare.
    eps = np.finfo(dtype).eps
    assert np.max(np.abs(c - ref)) <= eps * 31 * np.max(np.abs(a)) * np.max(np.abs(b))


def test_matmul_float16_accumulates_in_float32():
    # Documented: fp16 storage, fp32 accumulation, one rounding. A float16 accumulator stops at 2048
    # (2048 + 1 rounds back to 2048), so 4096 ones prove the wider accumulator.
    c = R.matmul(np.ones((1, 4096), np.float16), np.ones((4096, 1), np.float16))
    assert c.dtype == np.float16 and float(c[0, 0]) == 4096.0


def test_matmul_mixed_dtypes_promote_like_numpy(rng):
    a = rng.standard_normal((5, 6)).astype(np.float32)
    b = rng.standard_normal((6, 4))
    c = R.matmul(a, b)
    assert c.dtype == np.float64
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-14)


# ----------------------------------------------------------------------------------------- softmax

def _softmax_explicit(x):
    """Independent float64 statement: exp(x) / sum exp(x), rows scaled into a safe range first."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1), (5, 17), (2, 3, 129)])
def test_softmax_matches_formula_and_torch(rng, shape):
    x = rng.standard_normal(shape) * 4
    x.reshape(-1)[:: max(1, x.size // 3)] += 30.0        # outliers: a naive exp would be lopsided
    y = R.softmax(x)
    np.testing.assert_allclose(y, _softmax_explicit(x), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(R.log_softmax(x), np.log(_softmax_explicit(x)), rtol=1e-13, atol=1e-13)
    y2, cache = R.softmax_forward(x)
    assert np.array_equal(y2, y) and cache is y2
    torch = pytest.importorskip("torch", reason="torch is the CPU oracle: pip install torch==2.13.0")
    np.testing.assert_allclose(y, torch.softmax(torch.from_numpy(x), -1).numpy(), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(R.log_softmax(x), torch.log_softmax(torch.from_numpy(x), -1).numpy(),
                               rtol=1e-13, atol=1e-13)


def test_softmax_large_inputs_do_not_overflow():
    x = np.array([[1000.0, 1000.0, 999.0], [-1000.0, -1000.0, -1e300]])
    y = R.softmax(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(y[1], [0.5, 0.5, 0.0])


@pytest.mark.parametrize("shape", [(1,), (6,), (4, 9), (2, 3, 17)])
def test_softmax_backward_finite_differences(rng, shape):
    x = rng.standard_normal(shape) * 2
    w = rng.standard_normal(shape)                     # loss = sum(w * softmax(x)), so dy = w
    dx = R.softmax_backward(w, R.softmax(x))
    num = numerical_grad(lambda: float(np.sum(w * R.softmax(x))), x)
    assert rel_error(dx, num) <= FD_TOL


@pytest.mark.parametrize("shape", [(1,), (6,), (4, 9), (2, 3, 17)])
def test_log_softmax_backward_finite_differences(rng, shape):
    x = rng.standard_normal(shape) * 2
    w = rng.standard_normal(shape)
    dx = R.log_softmax_backward(w, R.log_softmax(x))
    num = numerical_grad(lambda: float(np.sum(w * R.log_softmax(x))), x)
    assert rel_error(dx, num) <= FD_TOL


def test_softmax_backward_matches_torch_autograd(rng):
    torch = pytest.importorskip("torch", reason="torch is the CPU oracle: pip install torch==2.13.0")
    x = rng.standard_normal((3, 4, 33))
    dy = rng.standard_normal(x.shape)
    for fwd, bwd, tfn in ((R.softmax, R.softmax_backward, torch.softmax),
                          (R.log_softmax, R.log_softmax_backward, torch.log_softmax)):
        xt = torch.from_numpy(x).requires_grad_()
        tfn(xt, -1).backward(torch.from_numpy(dy))
        np.testing.assert_allclose(bwd(dy, fwd(x)), xt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_masked_entries_and_all_masked_rows(rng):
    x = rng.standard_normal((4, 6))
    x[0, [1, 4]] = -np.inf                 # partly masked row: exact zeros there
    x[2, :] = -np.inf                      # a row that sees nothing: all zeros, never NaN
    dy = rng.standard_normal(x.shape)
    y = R.softmax(x)
    assert not np.any(np.isnan(y))
    assert np.all(y[0, [1, 4]] == 0.0) and np.all(y[2] == 0.0)
    np.testing.assert_allclose(y[[0, 1, 3]].sum(-1), 1.0, rtol=1e-15)
    # The unmasked entries of row 0 are the softmax of the unmasked logits alone.
    keep = [0, 2, 3, 5]
    np.testing.assert_allclose(y[0, keep], _softmax_explicit(x[0, keep]), rtol=1e-14)
    dx = R.softmax_backward(dy, y)
    assert np.all(dx[0, [1, 4]] == 0.0) and np.all(dx[2] == 0.0)
    np.testing.assert_allclose(dx[0, keep], R.softmax_backward(dy[0, keep], y[0, keep]), rtol=1e-13)

    ly = R.log_softmax(x)
    assert not np.any(np.isnan(ly))
    assert np.all(ly[2] == -np.inf) and np.all(ly[0, [1, 4]] == -np.inf)
    np.testing.assert_allclose(ly[0, keep], np.log(_softmax_explicit(x[0, keep])), rtol=1e-13)
    ldx = R.log_softmax_backward(dy, ly)
    assert np.all(ldx[2] == 0.0) and np.all(ldx[0, [1, 4]] == 0.0)
    np.testing.assert_allclose(ldx[0, keep], R.log_softmax_backward(dy[0, keep], ly[0, keep]), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_softmax_low_precision_computes_in_input_dtype(rng, dtype):
    x = (rng.standard_normal((8, 300)) * 3).astype(dtype)
    y = R.softmax(x)
    assert y.dtype == dtype and R.softmax_backward(y, y).dtype == dtype
    ref = _softmax_explicit(x.astype(np.float64))
    # exp and the row sum in `dtype`: a few eps relative, never NaN.
    assert np.max(np.abs(y - ref) / ref.max(-1, keepdims=True)) <= 8 * np.finfo(dtype).eps
    x[1] = -np.inf
    assert np.all(R.softmax(x)[1] == 0)


# --------------------------------------------------------------------------------------- attention

def _attention_explicit(q, k, v, causal, kv_lens, scale):
    """Independent float64 statement with Python loops over (b, h, i): masked logsumexp per row."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    o = np.zeros_like(q)
    lse = np.full((B, H, Lq), -np.inf)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                js = [j for j in range(Lk) if (not causal or j <= i) and (kv_lens is None or j < kv_lens[b])]
                if not js:
                    continue
                s = np.array([scale * q[b, h, i] @ k[b, h, j] for j in js])
                m = s.max()
                lse[b, h, i] = m + np.log(np.sum(np.exp(s - m)))
                o[b, h, i] = np.exp(s - lse[b, h, i]) @ v[b, h, js]
    return o, lse


CASES = [  # (B, H, Lq, Lk, D, causal, kv_lens)
    (1, 1, 1, 1, 1, False, None),
    (2, 3, 5, 7, 4, False, None),
    (2, 2, 7, 5, 3, True, None),
    (3, 1, 6, 6, 5, True, [6, 0, 1]),
    (2, 2, 4, 9, 2, False, [9, 3]),
    (1, 2, 9, 3, 4, True, [2]),
]


@pytest.mark.parametrize("case", CASES)
def test_attention_forward_matches_explicit_loops(rng, case):
    B, H, Lq, Lk, D, causal, kv_lens = case
    q, k, v = (rng.standard_normal((B, H, L, D)) for L in (Lq, Lk, Lk))
    kl = None if kv_lens is None else np.array(kv_lens)
    for scale in (None, 0.7):
        o, lse = R.attention_forward(q, k, v, causal=causal, kv_lens=kl, scale=scale)
        ro, rlse = _attention_explicit(q, k, v, causal, kl, 1 / np.sqrt(D) if scale is None else scale)
        np.testing.assert_allclose(o, ro, rtol=1e-13, atol=1e-14)
        assert np.array_equal(np.isinf(lse), np.isinf(rlse))
        np.testing.assert_allclose(np.where(np.isinf(lse), 0, lse), np.where(np.isinf(rlse), 0, rlse), rtol=1e-13)


@pytest.mark.parametrize("case", CASES)
def test_attention_backward_finite_differences(rng, case):
    B, H, Lq, Lk, D, causal, kv_lens = case
    q, k, v = (rng.standard_normal((B, H, L, D)) for L in (Lq, Lk, Lk))
    kl = None if kv_lens is None else np.array(kv_lens)
    do = rng.standard_normal(q.shape)
    o, lse = R.attention_forward(q, k, v, causal, kl)
    grads = R.attention_backward(do, q, k, v, o, lse, causal, kl)

    def loss():
        return float(np.sum(do * R.attention_forward(q, k, v, causal, kl)[0]))

    for name, x, g in zip("qkv", (q, k, v), grads):
        assert g.shape == x.shape and not np.any(np.isnan(g))
        err = rel_error(g, numerical_grad(loss, x))
        assert err <= FD_TOL, f"d{name}: rel err {err:.2e}"


def _torch_mask(B, Lq, Lk, causal, kv_lens):
    """torch's SDPA bool attn_mask (True = attend), (B, 1, Lq, Lk), the same visibility rule."""
    i = np.arange(Lq)[:, None]
    j = np.arange(Lk)[None, :]
    vis = np.ones((B, 1, Lq, Lk), bool)
    if causal:
        vis &= j <= i
    if kv_lens is not None:
        vis &= j < np.asarray(kv_lens)[:, None, None, None]
    return vis


@pytest.mark.parametrize("B,H,Lq,Lk,D,causal,kv_lens", [
    (2, 3, 17, 17, 8, False, None),
    (2, 3, 17, 17, 8, True, None),
    (2, 2, 5, 23, 16, False, [23, 4]),
    (2, 2, 23, 5, 16, True, [5, 3]),       # Lq > Lk causal: every row sees key 0, so no NaN in torch
    (1, 4, 1, 97, 8, False, [50]),
])
def test_attention_matches_torch_sdpa(rng, B, H, Lq, Lk, D, causal, kv_lens):
    torch = pytest.importorskip("torch", reason="torch is the CPU oracle: pip install torch==2.13.0")
    F = torch.nn.functional
    q, k, v = (rng.standard_normal((B, H, L, D)) for L in (Lq, Lk, Lk))
    do = rng.standard_normal(q.shape)
    kl = None if kv_lens is None else np.array(kv_lens)
    o, lse = R.attention_forward(q, k, v, causal, kl)
    dq, dk, dv = R.attention_backward(do, q, k, v, o, lse, causal, kl)

    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    if kv_lens is None:
        # torch's own causal flag (top-left aligned), so the alignment itself is what is checked.
        to = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    else:
        to = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(_torch_mask(B, Lq, Lk, causal, kl)))
    to.backward(torch.from_numpy(do))
    np.testing.assert_allclose(o, to.detach().numpy(), rtol=1e-12, atol=1e-13)
    for name, ours, t in (("dq", dq, tq), ("dk", dk, tk), ("dv", dv, tv)):
        np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-11, atol=1e-12, err_msg=name)
    # lse against torch.logsumexp of the masked, scaled scores.
    s = torch.from_numpy(q) @ torch.from_numpy(k).transpose(-1, -2) / np.sqrt(D)
    s = s.masked_fill(~torch.from_numpy(_torch_mask(B, Lq, Lk, causal, kl)), float("-inf"))
    np.testing.assert_allclose(lse, torch.logsumexp(s, -1).numpy(), rtol=1e-13)


def test_attention_rows_without_keys_are_zero_not_nan(rng):
    q, k, v = (rng.standard_normal((3, 2, 4, 5)) for _ in range(3))
    kl = np.array([0, 2, 0])
    do = rng.standard_normal(q.shape)
    for fwd, bwd in ((R.attention_forward, R.attention_backward),
                     (R.flash_attention_forward, R.flash_attention_backward)):
        o, lse = fwd(q, k, v, kv_lens=kl)
        dq, dk, dv = bwd(do, q, k, v, o, lse, kv_lens=kl)
        for x in (o, dq, dk, dv):
            assert not np.any(np.isnan(x))
        assert np.all(o[[0, 2]] == 0) and np.all(lse[[0, 2]] == -np.inf) and np.all(np.isfinite(lse[1]))
        assert np.all(dq[[0, 2]] == 0) and np.all(dk[[0, 2]] == 0) and np.all(dv[[0, 2]] == 0)
        assert np.all(dk[1, :, 2:] == 0) and np.all(dv[1, :, 2:] == 0)   # hidden keys get no gradient
        assert np.any(dk[1, :, :2] != 0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_attention_low_precision_keeps_dtype(rng, dtype):
    q, k, v = (rng.standard_normal((2, 2, 9, 8)).astype(dtype) for _ in range(3))
    do = rng.standard_normal(q.shape).astype(dtype)
    o, lse = R.attention_forward(q, k, v, causal=True)
    grads = R.attention_backward(do, q, k, v, o, lse, causal=True)
    fo, flse = R.flash_attention_forward(q, k, v, causal=True, block_q=4, block_k=4)
    ro, rlse = R.attention_forward(*(x.astype(np.float64) for x in (q, k, v)), causal=True)
    eps = float(np.finfo(dtype).eps)
    for x in (o, lse, fo, flse) + grads:
        assert x.dtype == dtype and np.all(np.isfinite(x))
    # Same-precision computations: within ~10 eps of the float64 result (values are O(1)).
    assert np.max(np.abs(o - ro)) <= 16 * eps and np.max(np.abs(fo - ro)) <= 16 * eps
    assert np.max(np.abs(lse - rlse)) <= 16 * eps * np.max(np.abs(rlse))
