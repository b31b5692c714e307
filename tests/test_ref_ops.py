"""numpy_ref's functional ops: every backward against central finite differences in float64
(relative error <= 1e-6), every forward and backward against torch's CPU operator in float64.

Loss for the finite differences: L = sum(w * out) with a fixed random w, so dout = w.
"""

import numpy as np
import pytest

import numpy_ref as R
from numpy_ref.activations import erf, normal_cdf
from numpy_ref.gradcheck import numerical_grad, rel_error

FD_TOL = 1e-6


def need_torch():
    return pytest.importorskip("torch", reason="torch is the CPU oracle: pip install torch==2.13.0")


def fd_check(forward, backward_grads, inputs, w):
    """forward() reads the arrays in `inputs` (name -> array) and returns the output; every
    analytic gradient in backward_grads (name -> array) must match finite differences."""
    for name, x in inputs.items():
        num = numerical_grad(lambda: float(np.sum(w * forward())), x)
        err = rel_error(backward_grads[name], num)
        assert err <= FD_TOL, f"d{name}: rel err {err:.2e}"


# ------------------------------------------------------------------------------------------ linear

@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear(rng, lead, bias):
    x = rng.standard_normal(lead + (7,))
    W = rng.standard_normal((4, 7))
    b = rng.standard_normal(4) if bias else None
    y, cache = R.linear_forward(x, W, b)
    np.testing.assert_allclose(y, x @ W.T + (b if bias else 0), rtol=1e-14)
    w = rng.standard_normal(y.shape)
    dx, dW, db = R.linear_backward(w, cache)
    assert (db is None) == (not bias)
    inputs = {"x": x, "W": W} | ({"b": b} if bias else {})
    fd_check(lambda: R.linear_forward(x, W, b)[0], {"x": dx, "W": dW, "b": db}, inputs, w)


# --------------------------------------------------------------------------------------- embedding

@pytest.mark.parametrize("padding_idx", [None, 0, 3])
def test_embedding(rng, padding_idx):
    V, E = 6, 5
    Wt = rng.standard_normal((V, E))
    ids = np.array([[0, 3, 3, 5], [1, 0, 3, 2]])       # repeated ids must accumulate
    out, cache = R.embedding_forward(ids, Wt, padding_idx)
    assert np.array_equal(out, Wt[ids])
    w = rng.standard_normal(out.shape)
    dW = R.embedding_backward(w, cache)
    expect = np.zeros_like(Wt)
    for (i, j), t in np.ndenumerate(ids):
        if t != padding_idx:
            expect[t] += w[i, j]
    np.testing.assert_allclose(dW, expect, rtol=1e-14)
    if padding_idx is None:          # with a padding row, FD would see a gradient torch does not give
        fd_check(lambda: R.embedding_forward(ids, Wt)[0], {"W": dW}, {"W": Wt}, w)


def test_embedding_matches_torch(rng):
    torch = need_torch()
    emb = torch.nn.Embedding(9, 4, padding_idx=2).double()
    ids = rng.integers(0, 9, (3, 11))
    ids[0, :3] = 2
    out = emb(torch.from_numpy(ids))
    w = rng.standard_normal(out.shape)
    out.backward(torch.from_numpy(w))
    ours, cache = R.embedding_forward(ids, emb.weight.detach().numpy(), 2)
    np.testing.assert_array_equal(ours, out.detach().numpy())
    np.testing.assert_allclose(R.embedding_backward(w, cache), emb.weight.grad.numpy(), rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------------------ positional

@pytest.mark.parametrize("d_model", [1, 6, 7])
def test_sinusoidal_positional_encoding(d_model):
    pe = R.sinusoidal_positional_encoding(9, d_model)
    assert pe.shape == (9, d_model) and pe.dtype == np.float64
    for pos in range(9):
        for c in range(d_model):
            angle = pos / 10000 ** ((c - c % 2) / d_model)
            assert pe[pos, c] == pytest.approx(np.sin(angle) if c % 2 == 0 else np.cos(angle), abs=1e-15)
    assert R.sinusoidal_positional_encoding(3, 4, np.float32).dtype == np.float32


# ------------------------------------------------------------------------------------ activations

def test_erf_against_libm_and_torch():
    torch = need_torch()
    import math
    x = np.concatenate([np.linspace(-10, 10, 20001), [0.0, -0.0, 1e-300, 5.9999, 6.0, 6.0001, 40.0]])
    ref = np.array([math.erf(v) for v in x])
    # Degree-20 Chebyshev fit of erfcx; its samples carry exp(z^2) rounding (~36 eps at z = 6).
    assert np.max(np.abs(erf(x) - ref)) <= 1e-14
    np.testing.assert_allclose(erf(x), torch.special.erf(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-14)
    z = np.linspace(-8.4, 8.4, 3001)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in z])
    assert np.max(np.abs(normal_cdf(z) - cdf) / cdf) <= 2e-14     # relative, far tails included


@pytest.mark.parametrize("kind", ["relu", "gelu", "gelu_tanh"])
def test_activations(rng, kind):
    x = rng.standard_normal((4, 33)) * 3
    x[np.abs(x) < 1e-3] = 0.5          # relu's kink: finite differences straddling 0 are meaningless
    approx = "none" if kind == "gelu" else "tanh"
    fwd = (lambda: R.relu_forward(x)) if kind == "relu" else (lambda: R.gelu_forward(x, approx))
    bwd = R.relu_backward if kind == "relu" else R.gelu_backward
    y, cache = fwd()
    w = rng.standard_normal(y.shape)
    dx = bwd(w, cache)
    fd_check(lambda: fwd()[0], {"x": dx}, {"x": x}, w)
    torch = need_torch()
    F = torch.nn.functional
    tf = F.relu if kind == "relu" else (lambda t: F.gelu(t, approximate=approx))
    xt = torch.from_numpy(x).requires_grad_()
    yt = tf(xt)
    yt.backward(torch.from_numpy(w))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-13, atol=1e-14)


def test_activations_keep_float32(rng):
    x = rng.standard_normal(100).astype(np.float32)
    for fwd, bwd in ((R.relu_forward, R.relu_backward), (R.gelu_forward, R.gelu_backward)):
        y, c = fwd(x)
        assert y.dtype == np.float32 and bwd(np.ones_like(x), c).dtype == np.float32


# ------------------------------------------------------------------------------------- layer norm

@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(1, 3), (5, 8), (2, 3, 17)])  # E = 2: xhat = +-1, dx ~ eps only
def test_layer_norm(rng, affine, shape):
    E = shape[-1]
    x = rng.standard_normal(shape) * 2 + 1
    wt = rng.standard_normal(E) if affine else None
    b = rng.standard_normal(E) if affine else None
    y, cache = R.layer_norm_forward(x, wt, b, eps=1e-5)
    w = rng.standard_normal(y.shape)
    dx, dwt, db = R.layer_norm_backward(w, cache)
    inputs = {"x": x} | ({"wt": wt, "b": b} if affine else {})
    fd_check(lambda: R.layer_norm_forward(x, wt, b, eps=1e-5)[0], {"x": dx, "wt": dwt, "b": db}, inputs, w)
    torch = need_torch()
    xt = torch.from_numpy(x).requires_grad_()
    ts = [torch.from_numpy(a).requires_grad_() for a in (wt, b)] if affine else [None, None]
    yt = torch.nn.functional.layer_norm(xt, (E,), ts[0], ts[1], eps=1e-5)
    yt.backward(torch.from_numpy(w))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-11, atol=1e-12)
    if affine:
        np.testing.assert_allclose(dwt, ts[0].grad.numpy(), rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(db, ts[1].grad.numpy(), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------- dropout

def test_dropout(rng):
    x = rng.standard_normal((200, 300))
    y, mask = R.dropout_forward(x, 0.3, np.random.default_rng(5))
    kept = mask != 0
    # Kept fraction ~ 0.7 over 60000 draws: 5 standard deviations is 0.0094.
    assert abs(kept.mean() - 0.7) < 0.0094
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-15)
    assert np.all(y[~kept] == 0)
    y2, _ = R.dropout_forward(x, 0.3, np.random.default_rng(5))
    assert np.array_equal(y, y2)                                  # explicit generator: reproducible
    w = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(R.dropout_backward(w, mask), w * mask)
    small = x[:3, :4].copy()
    w = w[:3, :4]
    _, m = R.dropout_forward(small, 0.5, np.random.default_rng(9))
    fd_check(lambda: R.dropout_forward(small, 0.5, np.random.default_rng(9))[0],
             {"x": R.dropout_backward(w, m)}, {"x": small}, w)


def test_dropout_identity_and_p1(rng):
    x = rng.standard_normal((3, 4))
    for kwargs in ({"p": 0.0, "rng": None}, {"p": 0.5, "rng": None, "training": False}):
        y, c = R.dropout_forward(x, **kwargs)
        assert y is x and c is None and R.dropout_backward(x, c) is x
    y, c = R.dropout_forward(x, 1.0, np.random.default_rng(0))
    assert np.all(y == 0) and np.all(R.dropout_backward(x, c) == 0)


# ---------------------------------------------------------------------------------- cross-entropy

@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("shape", [(1,), (6,), (2, 5)])
def test_cross_entropy(rng, smoothing, ignore, shape):
    C = 7
    logits = rng.standard_normal(shape + (C,)) * 2
    targets = rng.integers(0, C, shape)
    ignore_index = -100
    if ignore and targets.size > 1:
        targets.reshape(-1)[::2] = ignore_index
    loss, cache = R.cross_entropy_forward(logits, targets, ignore_index, smoothing)
    assert loss.shape == () and loss.dtype == np.float64
    dlogits = R.cross_entropy_backward(1.0, cache)
    num = numerical_grad(lambda: float(R.cross_entropy_forward(logits, targets, ignore_index, smoothing)[0]), logits)
    assert rel_error(dlogits, num) <= FD_TOL
    np.testing.assert_allclose(R.cross_entropy_backward(2.5, cache), 2.5 * dlogits, rtol=1e-14)
    torch = need_torch()
    lt = torch.from_numpy(logits.reshape(-1, C)).requires_grad_()
    tl = torch.nn.functional.cross_entropy(lt, torch.from_numpy(targets.reshape(-1)), ignore_index=ignore_index,
                                           label_smoothing=smoothing)
    tl.backward()
    assert float(loss) == pytest.approx(tl.item(), rel=1e-13)
    np.testing.assert_allclose(dlogits.reshape(-1, C), lt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_positive_ignore_index_and_all_ignored(rng):
    logits = rng.standard_normal((4, 5))
    targets = np.array([0, 3, 0, 4])
    loss, cache = R.cross_entropy_forward(logits, targets, ignore_index=0)
    logp = R.log_softmax(logits)
    assert float(loss) == pytest.approx(-(logp[1, 3] + logp[3, 4]) / 2, rel=1e-14)
    assert np.all(R.cross_entropy_backward(1.0, cache)[[0, 2]] == 0)
    # Documented divergence from torch (which gives NaN): nothing to average -> loss 0, gradient 0.
    loss, cache = R.cross_entropy_forward(logits, np.zeros(4, int), ignore_index=0)
    assert float(loss) == 0.0 and np.all(R.cross_entropy_backward(1.0, cache) == 0)


# ---------------------------------------------------------------------------- multi-head attention

def _mha_inputs(rng, N, L, S, E, mode):
    query = rng.standard_normal((N, L, E))
    if mode == "self":
        return query, query, query
    key = rng.standard_normal((N, S, E))
    return query, key, (key if mode == "kv" else rng.standard_normal((N, S, E)))


@pytest.mark.parametrize("mode", ["self", "kv", "general"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_mha_finite_differences(rng, mode, causal, padding):
    N, L, E, H = 2, 4, 6, 3
    S = L if mode == "self" else 5
    query, key, value = _mha_inputs(rng, N, L, S, E, mode)
    Wi, bi = rng.standard_normal((3 * E, E)) * 0.5, rng.standard_normal(3 * E)
    Wo, bo = rng.standard_normal((E, E)) * 0.5, rng.standard_normal(E)
    kpm = None
    if padding:
        kpm = np.zeros((N, S), bool)
        kpm[0, -2:] = True
        kpm[1, 1] = True               # not a suffix: masks are general here

    def fwd():
        return R.multi_head_attention_forward(query, key, value, Wi, bi, Wo, bo, H, key_padding_mask=kpm, causal=causal)

    out, cache = fwd()
    w = rng.standard_normal(out.shape)
    dq, dk, dv, g = R.multi_head_attention_backward(w, cache)
    assert (dk is None) == (mode == "self") and (dv is None) == (mode != "general")
    grads = {"query": dq, "key": dk, "value": dv, "Wi": g["in_proj_weight"], "bi": g["in_proj_bias"],
             "Wo": g["out_proj.weight"], "bo": g["out_proj.bias"]}
    inputs = {"query": query, "Wi": Wi, "bi": bi, "Wo": Wo, "bo": bo}
    if mode != "self":
        inputs["key"] = key
    if mode == "general":
        inputs["value"] = value
    fd_check(lambda: fwd()[0], grads, inputs, w)


def test_mha_dropout_finite_differences(rng):
    N, L, E, H = 2, 3, 4, 2
    x = rng.standard_normal((N, L, E))
    Wi, bi = rng.standard_normal((3 * E, E)), rng.standard_normal(3 * E)
    Wo, bo = rng.standard_normal((E, E)), rng.standard_normal(E)

    def fwd():   # the same generator state each call: the same dropout mask on the probabilities
        return R.multi_head_attention_forward(x, x, x, Wi, bi, Wo, bo, H, dropout_p=0.4,
                                              rng=np.random.default_rng(3))

    out, cache = fwd()
    assert np.any(cache[12] == 0)      # some probabilities were dropped
    w = rng.standard_normal(out.shape)
    dx, _, _, g = R.multi_head_attention_backward(w, cache)
    fd_check(lambda: fwd()[0], {"x": dx, "Wi": g["in_proj_weight"]}, {"x": x, "Wi": Wi}, w)


@pytest.mark.parametrize("mode", ["self", "kv", "general"])
def test_mha_matches_torch(rng, mode):
    torch = need_torch()
    N, L, E, H = 3, 5, 8, 2
    S = L if mode == "self" else 7
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True).double()
    with torch.no_grad():                 # torch initializes the biases to 0: make them matter
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    query, key, value = _mha_inputs(rng, N, L, S, E, mode)
    kpm = np.zeros((N, S), bool)
    kpm[1, -3:] = True
    kpm[2, 0] = True
    causal = mode == "self"
    tq = torch.from_numpy(query).requires_grad_()
    tk = tq if mode == "self" else torch.from_numpy(key).requires_grad_()
    tv = tq if mode == "self" else (tk if mode == "kv" else torch.from_numpy(value).requires_grad_())
    mask = torch.triu(torch.ones(L, S, dtype=torch.bool), 1) if causal else None
    tout, _ = mha(tq, tk, tv, key_padding_mask=torch.from_numpy(kpm), attn_mask=mask, need_weights=False)
    w = rng.standard_normal(tout.shape)
    tout.backward(torch.from_numpy(w))
    P = {k: v.detach().numpy() for k, v in mha.named_parameters()}
    out, cache = R.multi_head_attention_forward(query, key, value, P["in_proj_weight"], P["in_proj_bias"],
                                                P["out_proj.weight"], P["out_proj.bias"], H,
                                                key_padding_mask=kpm, causal=causal)
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12, atol=1e-13)
    dq, dk, dv, g = R.multi_head_attention_backward(w, cache)
    np.testing.assert_allclose(dq, tq.grad.numpy(), rtol=1e-11, atol=1e-12)
    if mode != "self":
        np.testing.assert_allclose(dk, tk.grad.numpy(), rtol=1e-11, atol=1e-12)
    if mode == "general":
        np.testing.assert_allclose(dv, tv.grad.numpy(), rtol=1e-11, atol=1e-12)
    for k, p in mha.named_parameters():
        np.testing.assert_allclose(g[k], p.grad.numpy(), rtol=1e-11, atol=1e-12, err_msg=k)


def test_mha_fully_padded_row_is_zero_not_nan(rng):
    N, L, E, H = 2, 3, 4, 2
    x = rng.standard_normal((N, L, E))
    Wi, Wo = rng.standard_normal((3 * E, E)), rng.standard_normal((E, E))
    bo = rng.standard_normal(E)
    kpm = np.zeros((N, L), bool)
    kpm[1] = True                                  # torch: NaN for batch 1; here: attention output 0
    out, cache = R.multi_head_attention_forward(x, x, x, Wi, None, Wo, bo, H, key_padding_mask=kpm)
    np.testing.assert_allclose(out[1], np.broadcast_to(bo, (L, E)), rtol=1e-15)   # 0 @ Wo.T + bo
    dx, _, _, g = R.multi_head_attention_backward(np.ones_like(out), cache)
    assert np.all(np.isfinite(dx)) and np.all(dx[1] == 0) and g["in_proj_bias"] is None
