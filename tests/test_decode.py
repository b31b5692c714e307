"""Greedy and beam decoding against brute force on small random models (float64, dropout 0).

The references re-run the whole model on one unpadded source at a time, so agreement also shows that
the decoders' batching, padding masks, encoder reuse and row dropping change nothing."""

import itertools

import numpy as np
import pytest

from numpy_ref import Transformer, TransformerConfig, data
from numpy_ref.decode import beam_search, encode_sources, exact_match, greedy_decode, translate
from numpy_ref.softmax import log_softmax

PAD, BOS, EOS = 0, 1, 2


def _model(vocab_size, d_model=16, seed=0, eos_bias=0.0):
    cfg = TransformerConfig(vocab_size=vocab_size, d_model=d_model, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=24,
                            dropout=0.0, positional_encoding="sinusoidal", pad_id=PAD)
    m = Transformer(cfg, seed=seed, dtype=np.float64)
    # Larger output weights: sharper distributions, so <eos> wins at varied steps and no two
    # candidates tie by accident.
    m.params["linear.weight"] *= 4.0
    m.params["linear.bias"][EOS] += eos_bias
    return m


def _padded(rng, n, vocab_size, max_len):
    lens = rng.integers(1, max_len + 1, size=n)
    lens[0] = max_len
    src = np.full((n, max_len), PAD, dtype=np.int64)
    for i, L in enumerate(lens):
        src[i, :L] = rng.integers(3, vocab_size, size=L)
    return src, src == PAD, lens


def _next_logp(model, src_row, prefix):
    logits, _ = model.forward(src_row[None], np.array([prefix]), training=False)
    return log_softmax(logits[0, -1])


def _greedy_one(model, src_row, max_len):
    prefix = [BOS]
    for _ in range(max_len):
        tok = int(np.argmax(_next_logp(model, src_row, prefix)))
        prefix.append(tok)
        if tok == EOS:
            break
    return prefix[1:]


def test_greedy_matches_one_at_a_time_unpadded(rng):
    # eos_bias 3: about half the rows stop before max_len (measured 29 of 40), half run to it.
    model = _model(11, eos_bias=3.0)
    src, mask, lens = _padded(rng, 13, 11, 7)
    out = greedy_decode(model, src, mask, 6, BOS, EOS, PAD)
    assert out.shape[0] == 13 and out.shape[1] <= 6
    stopped_early = 0
    for i in range(13):
        ref = _greedy_one(model, src[i, :lens[i]], 6)
        row = out[i, :len(ref)].tolist()
        assert row == ref, f"row {i}: {row} != {ref}"
        assert np.all(out[i, len(ref):] == PAD)
        stopped_early += ref[-1] == EOS and len(ref) < 6
    assert 0 < stopped_early < 13, "every row stopped at the same place: a path is untested"


def test_greedy_runs_the_encoder_once(rng):
    model = _model(11)
    calls = {"encode": 0, "decode": 0}
    enc, dec = model.encode, model.decode

    def count(name, f):
        def g(*a, **k):
            calls[name] += 1
            return f(*a, **k)
        return g

    model.encode, model.decode = count("encode", enc), count("decode", dec)
    src, mask, _ = _padded(rng, 5, 11, 4)
    out = greedy_decode(model, src, mask, 5, BOS, EOS, PAD)
    assert calls["encode"] == 1 and calls["decode"] == out.shape[1]


def test_beam_of_one_is_greedy(rng):
    model = _model(11, seed=3, eos_bias=3.0)
    src, mask, _ = _padded(rng, 9, 11, 5)
    g = greedy_decode(model, src, mask, 6, BOS, EOS, PAD)
    b = beam_search(model, src, mask, 6, BOS, EOS, PAD, beam_size=1)
    assert np.array_equal(b[:, :g.shape[1]], g) and np.all(b[:, g.shape[1]:] == PAD)


def _score(model, src_row, seq):
    prefix, total = [BOS], 0.0
    for tok in seq:
        total += _next_logp(model, src_row, prefix)[tok]
        prefix.append(tok)
    return total


def test_wide_beam_is_exhaustive_search(rng):
    # Vocabulary 5, max_len 3: a beam of 5^3 never prunes, so it must find the most likely of all
    # sequences that end at <eos> or at max_len.
    V, max_len = 5, 3
    model = _model(V, d_model=8, seed=1, eos_bias=1.0)
    src, mask, lens = _padded(rng, 3, V, 4)
    out = beam_search(model, src, mask, max_len, BOS, EOS, PAD, beam_size=V ** max_len)
    for i in range(3):
        s = src[i, :lens[i]]
        best, best_seq = -np.inf, None
        for L in range(1, max_len + 1):
            for seq in itertools.product(range(V), repeat=L):
                if EOS in seq[:-1] or (L < max_len and seq[-1] != EOS):
                    continue
                sc = _score(model, s, seq)
                if sc > best:
                    best, best_seq = sc, list(seq)
        got = out[i].tolist()
        got = got[:got.index(EOS) + 1] if EOS in got else got
        assert got == best_seq, f"row {i}: beam {got} (score {_score(model, s, got):.6f}) != best {best_seq} ({best:.6f})"


def test_decoder_argument_errors(rng):
    model = _model(11)
    src, mask, _ = _padded(rng, 2, 11, 3)
    with pytest.raises(ValueError, match="max_len"):
        greedy_decode(model, src, mask, 0, BOS, EOS, PAD)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, mask, 3, BOS, EOS, PAD, beam_size=0)
    with pytest.raises(ValueError, match="src must be a non-empty"):
        greedy_decode(model, src[:, :0], mask[:, :0], 3, BOS, EOS, PAD)
    with pytest.raises(ValueError, match="src_mask must be a bool"):
        greedy_decode(model, src, mask.astype(int), 3, BOS, EOS, PAD)
    all_pad = mask.copy()
    all_pad[1] = True
    with pytest.raises(ValueError, match="empty input"):
        greedy_decode(model, src, all_pad, 3, BOS, EOS, PAD)


def test_translate_and_its_input_errors():
    vocab = data.Vocab()
    model = _model(len(vocab))
    outs = translate(model, vocab, ["7", "40,213", " 12 "], data.MAX_TARGET_LEN, batch_size=2)
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)
    # Same answer alone as in a padded batch.
    assert translate(model, vocab, ["7"], data.MAX_TARGET_LEN) == outs[:1]
    with pytest.raises(ValueError, match="no input"):
        translate(model, vocab, [], data.MAX_TARGET_LEN)
    with pytest.raises(ValueError, match="cannot translate ''.*empty input"):
        translate(model, vocab, ["12", ""], data.MAX_TARGET_LEN)
    with pytest.raises(ValueError, match="cannot translate 'x1'.*'x' at position 0"):
        translate(model, vocab, ["x1"], data.MAX_TARGET_LEN)
    with pytest.raises(TypeError, match="list of strings"):
        encode_sources(vocab, "123")


def test_exact_match():
    assert exact_match(["a b", "c"], ["a b", "c "]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 1"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no references"):
        exact_match([], [])
