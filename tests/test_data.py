"""The embedded numbers-to-words task: the answers, the tokenizer, the fixed split, the batches."""

import numpy as np
import pytest

from numpy_ref import data


@pytest.fixture(scope="module")
def task():
    return data.make_task(n_train=3000, n_val=200)


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty-two"),
    (100, "one hundred"), (115, "one hundred fifteen"), (909, "nine hundred nine"),
    (1000, "one thousand"), (2042, "two thousand forty-two"), (17_000, "seventeen thousand"),
    (100_001, "one hundred thousand one"),
    (900_017, "nine hundred thousand seventeen"),
    (999_999, "nine hundred ninety-nine thousand nine hundred ninety-nine"),
])
def test_number_to_words(n, words):
    assert data.number_to_words(n) == words


def _words_to_number(text):
    # An independent parser: if number_to_words and this agree on every number, both are right
    # for the grammar (values, "hundred" and "thousand" multipliers, hyphenated tens).
    value = {w: i for i, w in enumerate(data._ONES)}
    value.update({w: 10 * i for i, w in enumerate(data._TENS) if w})
    total, group = 0, 0
    for w in text.replace("-", " ").split():
        if w == "hundred":
            group *= 100
        elif w == "thousand":
            total, group = total + group * 1000, 0
        else:
            group += value[w]
    return total + group


def test_number_to_words_round_trips_every_number_sampled(rng):
    ns = np.concatenate([np.arange(0, 2100), rng.integers(0, 10 ** 6, size=3000), [999_999]])
    for n in ns:
        assert _words_to_number(data.number_to_words(int(n))) == n, n


def test_max_target_len_is_the_longest_target():
    v = data.Vocab()
    longest = max(len(v.encode_target(data.number_to_words(n))) for n in range(0, 10 ** 6, 331))
    assert longest + 1 == data.MAX_TARGET_LEN == len(v.encode_target(data.number_to_words(777_777))) + 1


def test_number_to_words_rejects():
    with pytest.raises(ValueError, match="999,999"):
        data.number_to_words(10 ** 6)
    with pytest.raises(ValueError):
        data.number_to_words(-1)
    with pytest.raises(TypeError, match="n must be an int"):
        data.number_to_words(3.0)


def test_vocab_round_trip(task):
    v = task.vocab
    assert len(v) == 3 + 11 + 30 and v.tokens[:3] == ("<pad>", "<bos>", "<eos>")
    for text in task.train.targets[:300]:
        ids = v.encode_target(text)
        assert v.decode_target(ids + [v.eos_id, 5, 6]) == text   # stops at <eos>
        assert v.decode_target([v.bos_id] + ids) == text          # skips <bos>
    assert [v.tokens[i] for i in v.encode_source("40,213")] == list("40,213")


@pytest.mark.parametrize("text, message", [
    ("", "empty input"),
    ("   ", "empty input"),
    ("12a4", r"character 'a' at position 2"),
    ("4.5", r"character '\.' at position 1"),
    ("１２", "character '１' at position 0"),   # full-width digit: not ASCII 0-9
    ("1234567", "7 digits.*at most 6"),
    ("007", "leading zero"),
    ("12,34", "groups of three"),
    (",", "no digits"),
])
def test_source_errors_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        data.Vocab().encode_source(text)


def test_source_accepts_spaces_around_and_both_formats():
    v = data.Vocab()
    assert v.encode_source(" 40213 ") == v.encode_source("40213")
    assert len(v.encode_source("40,213")) == 6


def test_target_errors():
    v = data.Vocab()
    with pytest.raises(ValueError, match="empty target"):
        v.encode_target(" ")
    with pytest.raises(ValueError, match="'eleventy'"):
        v.encode_target("eleventy one")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        v.decode_target([99])


def test_split_is_fixed_and_disjoint():
    a = data.make_task(n_train=2000, n_val=200)
    b = data.make_task(n_train=2000, n_val=200)
    assert a.train.sources == b.train.sources and a.val.sources == b.val.sources
    c = data.make_task(seed=data.DATA_SEED + 1, n_train=2000, n_val=200)
    assert c.val.sources != a.val.sources
    val = {s.replace(",", "") for s in a.val.sources}
    train = {s.replace(",", "") for s in a.train.sources}
    assert len(val) == 200 and not val & train
    # Validation: 3..6 digits in equal shares; training: all lengths 1..6, both comma styles.
    vlen = np.bincount([len(s) for s in val], minlength=7)
    assert list(vlen[3:]) == [50, 50, 50, 50]
    tlen = {len(s.replace(",", "")) for s in a.train.sources}
    assert tlen == {1, 2, 3, 4, 5, 6}
    assert any("," in s for s in a.train.sources) and any(
        len(s) >= 4 and "," not in s for s in a.train.sources)


def test_split_arrays_match_texts(task):
    v, sp = task.vocab, task.train
    assert sp.src.dtype == np.int32 and sp.src.shape == (len(sp), sp.src_len.max())
    for i in range(0, len(sp), 97):
        assert "".join(v.tokens[t] for t in sp.src[i, :sp.src_len[i]]) == sp.sources[i]
        assert np.all(sp.src[i, sp.src_len[i]:] == v.pad_id)
        row = sp.tgt[i, :sp.tgt_len[i]]
        assert row[0] == v.bos_id and row[-1] == v.eos_id
        assert v.decode_target(row) == sp.targets[i]
        assert np.all(sp.tgt[i, sp.tgt_len[i]:] == v.pad_id)


def test_batches_are_trimmed_shifted_and_masked(task):
    v = task.vocab
    it = data.batches(task.train, 64, np.random.default_rng(0))
    seen = []
    for _ in range(len(task.train) // 64 + 2):   # past an epoch boundary
        b = next(it)
        assert b.src.shape[0] == b.tgt_in.shape[0] == 64
        assert np.array_equal(b.src_mask, b.src == v.pad_id)
        assert not b.src_mask[:, 0].any() and b.src_mask.any()   # padded, never empty
        assert np.all(b.tgt_in[:, 0] == v.bos_id)
        assert np.array_equal(b.tgt_in[:, 1:], b.tgt_out[:, :-1])
        assert np.array_equal(b.tgt_mask, b.tgt_in == v.pad_id)
        # Trimmed: the last column holds at least one real token.
        assert not b.src_mask[:, -1].all() and (b.tgt_out[:, -1] != v.pad_id).any()
        # Every label row ends with one <eos>, then only padding.
        assert np.all((b.tgt_out == v.eos_id).sum(1) == 1)
        seen.append(b.src)
    assert not np.array_equal(seen[0], seen[1])


def test_batches_reject_bad_size(task):
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(task.val, 0, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(task.val, len(task.val) + 1, np.random.default_rng(0)))
