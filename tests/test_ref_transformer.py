"""numpy_ref.Transformer against the PyTorch model built as the seed builds it (tests/_torch_transformer.py):
identical weights (loaded through load_state_dict), dropout 0, float64; logits and EVERY parameter
gradient within 1e-10 of the tensor's scale. Plus finite differences through the whole model with
dropout active, state-dict contracts, float32, and encode/decode == forward.
"""

import dataclasses

import numpy as np
import pytest

import numpy_ref as R
from numpy_ref.gradcheck import numerical_grad

TOL = 1e-10      # max |ours - torch| <= TOL * max |torch|, per tensor


def need_torch():
    return pytest.importorskip("torch", reason="torch is the CPU oracle: pip install torch==2.13.0")


def seed_preset(**kw):
    cfg = R.TransformerConfig.seed(vocab_size=29, embedding_dim=16, num_heads=4, num_layers=2)
    return dataclasses.replace(cfg, dropout=0.0, **kw)


def full(norm_first, **kw):
    base = dict(vocab_size=31, d_model=12, num_heads=3, num_encoder_layers=2, num_decoder_layers=3,
                dim_feedforward=40, dropout=0.0, activation="gelu", norm_first=norm_first,
                positional_encoding="sinusoidal", final_norm=True, pad_id=0)
    base.update(kw)
    return R.TransformerConfig(**base)


CONFIGS = {
    "seed": seed_preset(),
    "full_post_norm": full(False),
    "full_pre_norm": full(True),
    "pre_norm_relu_no_final": full(True, activation="relu", final_norm=False, positional_encoding="none", pad_id=None),
}


def batch(rng, cfg, N, S, T, pad=True):
    """Random tokens with trailing padding of random length (never a whole row: torch gives NaN)."""
    lo = 1 if cfg.pad_id == 0 else 0
    src = rng.integers(lo, cfg.vocab_size, (N, S))
    tgt = rng.integers(lo, cfg.vocab_size, (N, T))
    spm = np.zeros((N, S), bool)
    tpm = np.zeros((N, T), bool)
    if pad:
        for n in range(N):
            spm[n, rng.integers(1, S + 1):] = True
            tpm[n, rng.integers(1, T + 1):] = True
        if cfg.pad_id is not None:
            src[spm] = cfg.pad_id
            tgt[tpm] = cfg.pad_id
    return src, tgt, spm, tpm


def compare_with_torch(cfg, src, tgt, spm, tpm, causal, rng):
    torch = need_torch()
    from _torch_transformer import build_torch_model

    tm = build_torch_model(cfg, torch.float64).train()     # train(): torch's eager path, as in training
    model = R.Transformer(cfg, seed=1)
    model.load_state_dict(tm.state_dict())
    logits, cache = model.forward(src, tgt, spm, tpm, causal=causal)
    t = lambda a: None if a is None else torch.from_numpy(a)
    tlogits = tm(t(src), t(tgt), t(spm), t(tpm), causal)
    dlogits = rng.standard_normal(logits.shape)
    tlogits.backward(torch.from_numpy(dlogits))
    grads = model.backward(dlogits, cache)

    def check(ours, ref, what):
        err = float(np.max(np.abs(ours - ref)))
        scale = float(np.max(np.abs(ref)))
        assert err <= TOL * scale, f"{what}: max abs diff {err:.3e} > {TOL:g} x scale {scale:.3e}"

    check(logits, tlogits.detach().numpy(), "logits")
    tgrads = {k: p.grad for k, p in tm.named_parameters()}
    assert list(grads) == list(tm.state_dict())
    for k, g in grads.items():
        ref = tgrads[k].numpy() if tgrads[k] is not None else np.zeros_like(g)
        assert g.shape == ref.shape and g.dtype == np.float64, k
        check(g, ref, f"grad {k}")


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("causal", [True, False])
def test_matches_torch(rng, name, causal):
    cfg = CONFIGS[name]
    compare_with_torch(cfg, *batch(rng, cfg, N=3, S=7, T=6), causal, rng)


@pytest.mark.parametrize("name", ["seed", "full_post_norm"])
def test_matches_torch_without_padding_masks(rng, name):
    cfg = CONFIGS[name]
    src, tgt, _, _ = batch(rng, cfg, N=2, S=5, T=8, pad=False)
    compare_with_torch(cfg, src, tgt, None, None, True, rng)


@pytest.mark.parametrize("seed", range(5))
def test_matches_torch_randomized(seed):
    rng = np.random.default_rng(seed)
    H = int(rng.integers(1, 4))
    cfg = R.TransformerConfig(
        vocab_size=int(rng.integers(2, 40)), d_model=H * int(rng.integers(1, 6)), num_heads=H,
        num_encoder_layers=int(rng.integers(1, 3)), num_decoder_layers=int(rng.integers(1, 3)),
        dim_feedforward=int(rng.integers(1, 30)), dropout=0.0, activation=["relu", "gelu"][seed % 2],
        norm_first=bool(rng.integers(2)), positional_encoding=["none", "sinusoidal"][int(rng.integers(2))],
        final_norm=bool(rng.integers(2)), pad_id=None)
    N, S, T = (int(x) for x in rng.integers(1, 9, size=3))     # length-1 sequences included
    compare_with_torch(cfg, *batch(rng, cfg, N, S, T), bool(rng.integers(2)), rng)


def test_state_dict_keys_and_shapes_are_torchs():
    torch = need_torch()
    from _torch_transformer import build_torch_model

    for cfg in CONFIGS.values():
        sd = build_torch_model(cfg, torch.float64).state_dict()
        model = R.Transformer(cfg)
        assert list(model.state_dict()) == list(sd)
        assert {k: tuple(v.shape) for k, v in sd.items()} == {k: v.shape for k, v in model.state_dict().items()}
        assert R.parameter_shapes(cfg) == {k: v.shape for k, v in model.state_dict().items()}


def test_seed_preset_is_the_seeds_model():
    cfg = R.TransformerConfig.seed(vocab_size=100, embedding_dim=64, num_heads=8, num_layers=3)
    assert (cfg.d_model, cfg.num_heads, cfg.num_encoder_layers, cfg.num_decoder_layers) == (64, 8, 3, 3)
    # torch's nn.TransformerEncoderLayer defaults, no extras.
    assert (cfg.dim_feedforward, cfg.dropout, cfg.activation, cfg.norm_first) == (2048, 0.1, "relu", False)
    assert (cfg.positional_encoding, cfg.final_norm, cfg.pad_id) == ("none", False, None)
    keys = list(R.Transformer(cfg).state_dict())
    assert keys[0] == "embedding.weight" and keys[-2:] == ["linear.weight", "linear.bias"]
    assert "decoder.layers.2.multihead_attn.out_proj.bias" in keys
    assert not any(k.startswith(("encoder.norm", "decoder.norm")) for k in keys)


def test_initialization_follows_torch_defaults():
    cfg = full(False, d_model=64, num_heads=4, dim_feedforward=128, vocab_size=50, pad_id=3)
    p = R.Transformer(cfg, seed=7).params
    assert np.all(p["embedding.weight"][3] == 0)
    assert abs(np.std(p["embedding.weight"]) - 1) < 0.05                       # N(0, 1), 3200 draws
    bound = np.sqrt(6 / (3 * 64 + 64))
    w = p["encoder.layers.0.self_attn.in_proj_weight"]
    assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.99 * bound   # xavier-uniform, 12288 draws
    assert np.all(p["encoder.layers.0.self_attn.in_proj_bias"] == 0)
    assert np.all(p["decoder.layers.1.multihead_attn.out_proj.bias"] == 0)
    assert np.max(np.abs(p["decoder.layers.0.linear2.weight"])) <= 1 / np.sqrt(128)
    assert np.max(np.abs(p["decoder.layers.0.linear2.bias"])) <= 1 / np.sqrt(128)
    assert np.all(p["encoder.norm.weight"] == 1) and np.all(p["decoder.layers.2.norm3.bias"] == 0)
    assert np.array_equal(R.Transformer(cfg, seed=7).params["linear.weight"], p["linear.weight"])
    assert not np.array_equal(R.Transformer(cfg, seed=8).params["linear.weight"], p["linear.weight"])


def test_finite_differences_through_the_model_with_dropout():
    """Independent of torch: the full config with dropout 0.2 active (a fixed Generator per call gives
    the same masks), a cross-entropy loss with ignore_index, checked at sampled entries of every
    parameter tensor."""
    rng = np.random.default_rng(0)
    cfg = full(False, d_model=8, num_heads=2, dim_feedforward=10, vocab_size=11, dropout=0.2,
               num_encoder_layers=1, num_decoder_layers=1)
    model = R.Transformer(cfg, seed=3)
    src, tgt, spm, tpm = batch(rng, cfg, N=2, S=4, T=3)
    targets = np.where(tpm, 0, rng.integers(1, 11, tgt.shape))

    def loss_and_cache():
        logits, cache = model.forward(src, tgt, spm, tpm, rng=np.random.default_rng(42))
        loss, lcache = R.cross_entropy_forward(logits, targets, ignore_index=0, label_smoothing=0.1)
        return float(loss), cache, lcache

    _, cache, lcache = loss_and_cache()
    grads = model.backward(R.cross_entropy_backward(1.0, lcache), cache)
    for name, p in model.params.items():
        idx = rng.choice(p.size, size=min(p.size, 6), replace=False)
        if name == "embedding.weight":      # the padding row has no gradient by definition (torch's)
            idx = idx[idx // cfg.d_model != cfg.pad_id]
        num = numerical_grad(lambda: loss_and_cache()[0], p, index=idx).reshape(-1)[idx]
        ours = grads[name].reshape(-1)[idx]
        # Relative to the tensor's gradient scale: a sampled entry near 0 must not turn the ~1e-10
        # rounding of the central difference into a large relative error.
        scale = float(np.max(np.abs(grads[name])))
        assert scale > 0, name
        err = float(np.max(np.abs(ours - num))) / scale
        assert err <= 1e-6, f"{name}: rel err {err:.2e}"


def test_dropout_is_reproducible_and_off_in_eval(rng):
    cfg = full(False, dropout=0.3)
    model = R.Transformer(cfg)
    src, tgt, spm, tpm = batch(rng, cfg, 2, 5, 4)
    a, _ = model.forward(src, tgt, spm, tpm, rng=np.random.default_rng(1))
    b, _ = model.forward(src, tgt, spm, tpm, rng=np.random.default_rng(1))
    c, _ = model.forward(src, tgt, spm, tpm, rng=np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.allclose(a, c)
    model.eval()
    d, _ = model.forward(src, tgt, spm, tpm)
    e, _ = model.forward(src, tgt, spm, tpm, rng=np.random.default_rng(2))
    assert np.array_equal(d, e)
    model.train()
    f, _ = model.forward(src, tgt, spm, tpm, training=False)
    assert np.array_equal(d, f)


def test_encode_decode_equals_forward(rng):
    cfg = CONFIGS["full_pre_norm"]
    model = R.Transformer(cfg).eval()
    src, tgt, spm, tpm = batch(rng, cfg, 3, 6, 5)
    logits, _ = model.forward(src, tgt, spm, tpm)
    memory, _ = model.encode(src, spm)
    logits2, _ = model.decode(tgt, memory, spm, tpm)
    assert np.array_equal(logits, logits2)
    # Causality: logits at position t do not depend on later target tokens.
    tgt2 = tgt.copy()
    tgt2[:, 3:] = (tgt2[:, 3:] % (cfg.vocab_size - 1)) + 1
    logits3, _ = model.decode(tgt2, memory, spm, None)
    logits4, _ = model.decode(tgt, memory, spm, None)
    np.testing.assert_allclose(logits3[:, :3], logits4[:, :3], rtol=1e-13, atol=1e-13)


def test_float32_model_tracks_float64(rng):
    cfg = CONFIGS["full_post_norm"]
    m64 = R.Transformer(cfg, seed=2)
    m32 = R.Transformer(cfg, seed=2, dtype=np.float32)
    m32.load_state_dict(m64.state_dict())
    src, tgt, spm, tpm = batch(rng, cfg, 2, 6, 5)
    l64, c64 = m64.forward(src, tgt, spm, tpm)
    l32, c32 = m32.forward(src, tgt, spm, tpm)
    assert l32.dtype == np.float32
    d = rng.standard_normal(l64.shape)
    g64 = m64.backward(d, c64)
    g32 = m32.backward(d.astype(np.float32), c32)
    # float32 end to end through 5 layers: ~1e-6 relative per op; 1e-4 of the scale leaves room.
    assert np.max(np.abs(l32 - l64)) <= 1e-4 * np.max(np.abs(l64))
    for k in g64:
        assert g32[k].dtype == np.float32
        assert np.max(np.abs(g32[k] - g64[k])) <= 1e-4 * max(np.max(np.abs(g64[k])), 1e-30), k


def test_load_state_dict_names_every_offending_key():
    cfg = CONFIGS["seed"]
    model = R.Transformer(cfg)
    sd = model.state_dict()
    before = model.state_dict()
    del sd["linear.bias"]
    del sd["encoder.layers.1.norm2.weight"]
    sd["encoder.norm.weight"] = np.ones(16)
    sd["decoder.layers.0.linear1.weight"] = np.zeros((3, 3))
    sd["embedding.weight"] = sd["embedding.weight"] + 1
    with pytest.raises(ValueError) as e:
        model.load_state_dict(sd)
    msg = str(e.value)
    for key in ("linear.bias", "encoder.layers.1.norm2.weight", "encoder.norm.weight",
                "decoder.layers.0.linear1.weight"):
        assert key in msg
    # Nothing was loaded (the valid embedding change included).
    assert all(np.array_equal(model.params[k], before[k]) for k in before)
    sd = model.state_dict()
    sd["linear.weight"] = sd["linear.weight"].astype(np.int64)
    with pytest.raises(TypeError, match="linear.weight"):
        model.load_state_dict(sd)


def test_state_dict_round_trip_and_copies():
    cfg = CONFIGS["full_pre_norm"]
    a, b = R.Transformer(cfg, seed=0), R.Transformer(cfg, seed=1)
    b.load_state_dict(a.state_dict())
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    sd = a.state_dict()
    sd["linear.bias"][:] = 123.0
    assert not np.any(a.params["linear.bias"] == 123.0)
