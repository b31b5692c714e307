"""Blocked ("flash") attention == plain attention, forward and backward, in float64.

Block sizes that divide the lengths and ones that do not (1, 7, 16, 64, 100: one-row tiles, ragged
last tiles, a single tile bigger than the sequence), causal on and off, kv_lens with 0 and 1, Lq != Lk,
length 1. Plain attention itself is checked against loops, finite differences and torch in
test_ref_core.py, so agreement here makes the blocked algorithm (what the kernels implement) right.
"""

import itertools

import numpy as np
import pytest

import numpy_ref as R

BLOCKS = [1, 7, 16, 64, 100]
SHAPES = [  # (B, H, Lq, Lk, D)
    (2, 3, 37, 37, 8),
    (2, 2, 19, 70, 5),
    (1, 2, 70, 19, 4),
    (3, 1, 1, 1, 3),
    (2, 1, 1, 33, 6),
    (2, 2, 33, 1, 2),
]
KV_LENS = {  # name -> function of (B, Lk) giving kv_lens, or None
    "none": lambda B, Lk: None,
    "zero_and_one": lambda B, Lk: np.array(([0, 1, Lk] * B)[:B]),
    "ragged": lambda B, Lk: np.array([max(0, Lk - 3 * b - 2) if b else Lk for b in range(B)]),
}


def _close(a, b, what):
    assert a.shape == b.shape, what
    both_ninf = (a == -np.inf) & (b == -np.inf)
    assert np.array_equal(np.isinf(a), np.isinf(b)), f"{what}: different -inf pattern"
    with np.errstate(invalid="ignore"):          # -inf - (-inf) on no-key rows, replaced by 0
        diff = np.abs(np.where(both_ninf, 0.0, a - b))
    # Floor 1: every input is O(1), and a tensor that is zero in exact arithmetic (dq when Lk = 1:
    # the softmax over one key is constant) is rounding noise of O(1e-16) in both versions.
    scale = max(float(np.max(np.abs(np.where(np.isinf(b), 0.0, b)), initial=0.0)), 1.0)
    # Both are float64 sums of the same terms in different orders: ~1e-16 x terms, far below 1e-12.
    assert float(np.max(diff, initial=0.0)) <= 1e-12 * scale, f"{what}: max diff {diff.max():.3e} (scale {scale:.3e})"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", list(KV_LENS))
def test_flash_equals_plain(rng, shape, causal, lens):
    B, H, Lq, Lk, D = shape
    q = rng.standard_normal((B, H, Lq, D)) * 1.5
    k = rng.standard_normal((B, H, Lk, D)) * 1.5
    v = rng.standard_normal((B, H, Lk, D))
    do = rng.standard_normal(q.shape)
    kl = KV_LENS[lens](B, Lk)
    o, lse = R.attention_forward(q, k, v, causal, kl)
    grads = R.attention_backward(do, q, k, v, o, lse, causal, kl)
    for bq, bk in itertools.product(BLOCKS, BLOCKS):
        fo, flse = R.flash_attention_forward(q, k, v, causal, kl, block_q=bq, block_k=bk)
        _close(fo, o, f"o (block_q={bq}, block_k={bk})")
        _close(flse, lse, f"lse (block_q={bq}, block_k={bk})")
        fgrads = R.flash_attention_backward(do, q, k, v, o, lse, causal, kl, block_q=bq, block_k=bk)
        for name, fg, g in zip(("dq", "dk", "dv"), fgrads, grads):
            _close(fg, g, f"{name} (block_q={bq}, block_k={bk})")


def test_flash_custom_scale_and_large_logits(rng):
    # Logits up to ~60: the online softmax must rescale (alpha << 1) many times without overflow.
    q = rng.standard_normal((2, 2, 50, 16)) * 4
    k = rng.standard_normal((2, 2, 50, 16)) * 4
    v = rng.standard_normal((2, 2, 50, 16))
    do = rng.standard_normal(q.shape)
    o, lse = R.attention_forward(q, k, v, causal=True, scale=0.9)
    fo, flse = R.flash_attention_forward(q, k, v, causal=True, scale=0.9, block_q=8, block_k=3)
    _close(fo, o, "o")
    _close(flse, lse, "lse")
    g = R.attention_backward(do, q, k, v, o, lse, causal=True, scale=0.9)
    fg = R.flash_attention_backward(do, q, k, v, o, lse, causal=True, scale=0.9, block_q=8, block_k=3)
    for name, a, b in zip(("dq", "dk", "dv"), fg, g):
        _close(a, b, name)


@pytest.mark.parametrize("seed", range(6))
def test_flash_randomized_shapes(seed):
    rng = np.random.default_rng(1000 + seed)
    B, H = rng.integers(1, 4, size=2)
    Lq, Lk = rng.integers(1, 90, size=2)
    D = int(rng.integers(1, 20))
    causal = bool(rng.integers(2))
    kl = rng.integers(0, Lk + 1, size=B) if rng.integers(2) else None
    bq, bk = (int(x) for x in rng.integers(1, 40, size=2))
    q, k, v = (rng.standard_normal((B, H, L, D)) for L in (Lq, Lk, Lk))
    do = rng.standard_normal(q.shape)
    o, lse = R.attention_forward(q, k, v, causal, kl)
    fo, flse = R.flash_attention_forward(q, k, v, causal, kl, block_q=bq, block_k=bk)
    _close(fo, o, "o")
    _close(flse, lse, "lse")
    g = R.attention_backward(do, q, k, v, o, lse, causal, kl)
    fg = R.flash_attention_backward(do, q, k, v, o, lse, causal, kl, block_q=bq, block_k=bk)
    for name, a, b in zip(("dq", "dk", "dv"), fg, g):
        _close(a, b, name)
