"""The embedded translation task: numbers written in digits -> the same number in English words.

    "40,213"  ->  "forty thousand two hundred thirteen"
    "7"       ->  "seven"
    "900017"  ->  "nine hundred thousand seventeen"

Why this task: it needs no download (every example is generated here from a fixed seed), every
answer is checkable exactly, and it cannot be solved without attention over the source: the word
emitted at each step depends on one or two digits whose position depends on the number's length
and on whether it was written with thousands separators. Lengths vary (1 to 7 source characters,
1 to 9 target words), so every batch has padding on both sides and exercises the padding masks.

Tokens: one vocabulary shared by source and target (the seed's model has one embedding table):
``<pad> <bos> <eos>``, the source characters ``0-9 ,``, and the 30 English words. The source is
tokenized by character, the target by word (hyphens split, so "forty-two" is ``forty two``, and
``Vocab.decode_target`` puts the hyphen back).

The split is fixed: ``make_task()`` draws 1,000 validation numbers (250 each of 3, 4, 5 and 6
digits) and then a training set whose numbers never include a validation number, all from
``DATA_SEED``. The training seed of ``tfm-kernels train`` changes the initialization and batch
order, never the data, so accuracies of different runs are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["DATA_SEED", "MAX_DIGITS", "MAX_TARGET_LEN", "Vocab", "Split", "Task", "Batch", "number_to_words",
           "format_number", "normalize_source", "make_task", "encode_pairs", "batches", "take"]

DATA_SEED = 20240613
MAX_DIGITS = 6  # 0 .. 999,999
# The longest target: 4 tokens per group of three digits ("seven hundred seventy seven"), two groups,
# "thousand", and <eos>. Decoding stops there.
MAX_TARGET_LEN = 2 * 4 + 1 + 1

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
         "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALE = ["", "thousand"]
WORDS = tuple(_ONES + _TENS[2:] + ["hundred", "thousand"])
SOURCE_CHARS = tuple("0123456789,")
SPECIALS = ("<pad>", "<bos>", "<eos>")


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else ""))
    elif n > 0:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """American English without "and": 115 -> "one hundred fifteen", 2042 -> "two thousand forty-two"."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = int(n)
    if not 0 <= n < 10 ** MAX_DIGITS:
        raise ValueError(f"n must be in [0, {10 ** MAX_DIGITS - 1:,}], got {n:,}")
    if n == 0:
        return "zero"
    words: list[str] = []
    for scale in range(len(_SCALE) - 1, -1, -1):
        group = (n // 1000 ** scale) % 1000
        if group:
            words += _below_thousand(group) + ([_SCALE[scale]] if scale else [])
    return " ".join(words)


def format_number(n: int, commas: bool) -> str:
    """The source side: "40213" or "40,213"."""
    return f"{n:,}" if commas else str(n)


def normalize_source(text: str) -> str:
    """Check a source string against the task's rules; returns it stripped of surrounding spaces.

    Raises ValueError naming the problem: empty, characters outside ``0-9 ,`` (with the character
    and its position), leading zeros, more than MAX_DIGITS digits, commas not every three digits."""
    if not isinstance(text, str):
        raise TypeError(f"source must be a str, got {type(text).__name__}")
    s = text.strip()
    if not s:
        raise ValueError("empty input: the source must be a number written in digits, e.g. 40213")
    for i, ch in enumerate(s):
        if ch not in SOURCE_CHARS:
            raise ValueError(f"character {ch!r} at position {i} of {s!r} is not in the source "
                             f"vocabulary (digits 0-9 and ',')")
    digits = s.replace(",", "")
    if not digits:
        raise ValueError(f"{s!r} has no digits")
    if len(digits) > MAX_DIGITS:
        raise ValueError(f"{s!r} has {len(digits)} digits; the task covers at most {MAX_DIGITS} "
                         f"(0 to {10 ** MAX_DIGITS - 1:,})")
    if len(digits) > 1 and digits[0] == "0":
        raise ValueError(f"{s!r} has a leading zero; write numbers as usual, e.g. {int(digits)}")
    if "," in s and s != format_number(int(digits), commas=True):
        raise ValueError(f"{s!r}: commas must separate groups of three digits, as in "
                         f"{format_number(int(digits), commas=True)}")
    return s


@dataclass(frozen=True)
class Vocab:
    """Token <-> id. Ids 0, 1, 2 are <pad>, <bos>, <eos>; the model's ``pad_id`` is ``pad_id``."""

    tokens: tuple[str, ...] = SPECIALS + SOURCE_CHARS + WORDS

    def __post_init__(self):
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __len__(self) -> int:
        return len(self.tokens)

    def encode_source(self, text: str) -> list[int]:
        """Character ids of a checked source string (see ``normalize_source``); no <bos>/<eos>."""
        return [self._index[ch] for ch in normalize_source(text)]

    def encode_target(self, text: str) -> list[int]:
        """Word ids of a target string; hyphenated words become two tokens."""
        words = text.replace("-", " ").split()
        if not words:
            raise ValueError("empty target")
        bad = [w for w in words if w not in WORDS]
        if bad:
            raise ValueError(f"target words {bad} are not in the target vocabulary")
        return [self._index[w] for w in words]

    def decode_target(self, ids: Sequence[int]) -> str:
        """Words up to the first <eos>, <bos>/<pad> skipped, tens and units joined by a hyphen."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} is outside the vocabulary of {len(self.tokens)}")
            tok = self.tokens[i]
            if words and words[-1] in _TENS[2:] and tok in _ONES[1:10]:
                words[-1] += "-" + tok
            else:
                words.append(tok)
        return " ".join(words)


@dataclass(frozen=True)
class Split:
    """One split, pre-encoded: ``src`` (N, S) and ``tgt`` (N, T) int32, padded with ``pad_id``;
    ``tgt`` is ``<bos> words <eos>`` so ``tgt[:, :-1]`` feeds the decoder and ``tgt[:, 1:]`` is
    the label. ``src_len``/``tgt_len`` count the real tokens."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    src: np.ndarray
    src_len: np.ndarray
    tgt: np.ndarray
    tgt_len: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)


@dataclass(frozen=True)
class Task:
    vocab: Vocab
    train: Split
    val: Split
    seed: int


@dataclass(frozen=True)
class Batch:
    """Model-ready arrays; masks are True at padding (torch's convention)."""

    src: np.ndarray          # (B, S) int
    src_mask: np.ndarray     # (B, S) bool
    tgt_in: np.ndarray       # (B, T) int: <bos> w1 .. wn, padded
    tgt_out: np.ndarray      # (B, T) int: w1 .. wn <eos>, padded with pad_id (ignored by the loss)
    tgt_mask: np.ndarray     # (B, T) bool


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([len(r) for r in rows], dtype=np.int32)
    out = np.full((len(rows), int(lens.max(initial=1))), pad_id, dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out, lens


def encode_pairs(vocab: Vocab, sources: Sequence[str], targets: Sequence[str]) -> Split:
    src, src_len = _pad([vocab.encode_source(s) for s in sources], vocab.pad_id)
    tgt, tgt_len = _pad([[vocab.bos_id, *vocab.encode_target(t), vocab.eos_id] for t in targets],
                        vocab.pad_id)
    return Split(tuple(sources), tuple(targets), src, src_len, tgt, tgt_len)


def _draw(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    low = np.where(digits == 1, 0, 10 ** (digits - 1))
    return rng.integers(low, 10 ** digits)


def make_task(seed: int = DATA_SEED, n_train: int = 40_000, n_val: int = 1_000) -> Task:
    """The fixed task. Validation: ``n_val`` distinct numbers, equal shares of 3..6 digits.
    Training: ``n_train`` numbers with a digit count uniform in 1..6 (so small numbers, a finite
    table, are seen often), none of them a validation number. Numbers of 4+ digits are written
    with thousands separators half of the time, on both splits."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    rng = np.random.default_rng(seed)
    val_numbers: list[int] = []
    per_len = -(-n_val // 4)
    for d in (3, 4, 5, 6):
        pool = np.arange(10 ** (d - 1), 10 ** d)
        val_numbers += rng.choice(pool, size=min(per_len, len(pool)), replace=False).tolist()
    val_numbers = [int(x) for x in rng.permutation(val_numbers)[:n_val]]
    held_out = np.array(sorted(val_numbers))

    train_numbers = np.empty(0, dtype=np.int64)
    while len(train_numbers) < n_train:  # rejection of held-out numbers; one pass nearly always
        cand = _draw(rng, rng.integers(1, MAX_DIGITS + 1, size=n_train))
        keep = ~np.isin(cand, held_out)
        train_numbers = np.concatenate([train_numbers, cand[keep]])
    train_numbers = train_numbers[:n_train]

    def texts(numbers):
        commas = rng.random(len(numbers)) < 0.5
        src = [format_number(int(n), bool(c and n >= 1000)) for n, c in zip(numbers, commas)]
        return src, [number_to_words(int(n)) for n in numbers]

    vocab = Vocab()
    train = encode_pairs(vocab, *texts(train_numbers))
    val = encode_pairs(vocab, *texts(val_numbers))
    return Task(vocab, train, val, seed)


def batches(split: Split, batch_size: int, rng: np.random.Generator,
            pad_id: int = Vocab.pad_id) -> Iterator[Batch]:
    """Endless shuffled batches, a fresh permutation each epoch, each trimmed to its own longest
    source and target (no per-sample Python work: slicing of the pre-encoded arrays)."""
    n = len(split)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [1, {n}] (the split's size), got {batch_size}")
    while True:
        perm = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield take(split, perm[start:start + batch_size], pad_id)


def take(split: Split, idx: np.ndarray, pad_id: int = Vocab.pad_id) -> Batch:
    """The batch of examples ``idx`` of ``split``."""
    s = int(split.src_len[idx].max())
    t = int(split.tgt_len[idx].max())
    src = split.src[idx, :s]
    tgt = split.tgt[idx, :t]
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    return Batch(src=src, src_mask=src == pad_id, tgt_in=tgt_in, tgt_out=tgt_out,
                 tgt_mask=tgt_in == pad_id)
