"""Decoding with a trained numpy_ref.Transformer: greedy and beam search, and exact-match accuracy.

    greedy_decode(model, src, src_mask, max_len, bos_id, eos_id, pad_id) -> (N, <= max_len) ids
    beam_search(model, src, src_mask, max_len, bos_id, eos_id, pad_id, beam_size) -> same
    translate(model, vocab, texts, beam_size=1) -> list of target strings
    exact_match(predictions, references) -> fraction of predictions equal to their reference

Both decoders run the encoder once per batch (``model.encode``) and then call ``model.decode`` once
per output position on the whole prefix, with dropout off. There is no key/value cache: the prefix is
re-decoded each step, which costs O(T^2) decoder positions instead of O(T). For this project's task
(T <= 10) that is 5.5x the work of one pass and keeps the decoder exactly the model's own forward
(a cache would be a second implementation of attention to keep in sync).

Greedy decoding drops a row from the batch as soon as it has produced <eos>, so the work per step
shrinks with the number of unfinished rows (on the validation set most rows finish by step 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .softmax import log_softmax

__all__ = ["greedy_decode", "beam_search", "translate", "exact_match", "encode_sources"]


def _check_src(src, src_mask):
    src = np.asarray(src)
    if src.ndim != 2 or src.shape[0] == 0 or src.shape[1] == 0:
        raise ValueError(f"src must be a non-empty (N, S) array of token ids, got shape {src.shape}")
    if src_mask is not None:
        src_mask = np.asarray(src_mask)
        if src_mask.dtype != np.bool_ or src_mask.shape != src.shape:
            raise ValueError(f"src_mask must be a bool array of shape {src.shape} (True = padding), "
                             f"got {src_mask.dtype} {src_mask.shape}")
        if src_mask.all(axis=1).any():
            raise ValueError("src_mask hides every position of some source: empty input")
    return src, src_mask


def _check_max_len(max_len):
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    return int(max_len)


def greedy_decode(model, src, src_mask, max_len: int, bos_id: int, eos_id: int,
                  pad_id: int) -> np.ndarray:
    """Most likely next token at each step. Returns (N, L) ids without <bos>, L <= max_len; each row
    ends at its first <eos> (kept) and is padded with ``pad_id`` after it; a row that reaches
    ``max_len`` without <eos> is cut there."""
    src, src_mask = _check_src(src, src_mask)
    max_len = _check_max_len(max_len)
    N = src.shape[0]
    memory, _ = model.encode(src, src_mask, training=False)
    out = np.full((N, max_len), pad_id, dtype=np.int64)
    active = np.arange(N)                         # rows still without <eos>
    ys = np.full((N, 1), bos_id, dtype=np.int64)  # prefixes of the active rows
    length = 0
    for t in range(max_len):
        logits, _ = model.decode(ys, memory, src_mask, causal=True, training=False)
        nxt = logits[:, -1].argmax(axis=-1)
        out[active, t] = nxt
        length = t + 1
        keep = nxt != eos_id
        if not keep.any():
            break
        active, memory, ys = active[keep], memory[keep], np.concatenate(
            [ys[keep], nxt[keep, None]], axis=1)
        if src_mask is not None:
            src_mask = src_mask[keep]
    return out[:, :length]


def beam_search(model, src, src_mask, max_len: int, bos_id: int, eos_id: int, pad_id: int,
                beam_size: int = 4, length_penalty: float = 0.0) -> np.ndarray:
    """Keep the ``beam_size`` best prefixes by total log-probability; a finished beam (<eos>)
    carries its score unchanged. The winner maximizes ``score / length ** length_penalty``
    (0 = raw log-probability). Same output layout as greedy_decode; beam_size=1 is greedy."""
    src, src_mask = _check_src(src, src_mask)
    max_len = _check_max_len(max_len)
    if isinstance(beam_size, bool) or not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    N, B = src.shape[0], int(beam_size)
    memory, _ = model.encode(src, src_mask, training=False)
    # Every source repeated B times: row n*B + b is beam b of source n.
    memory = np.repeat(memory, B, axis=0)
    mask = None if src_mask is None else np.repeat(src_mask, B, axis=0)
    ys = np.full((N * B, 1), bos_id, dtype=np.int64)
    scores = np.full((N, B), -np.inf)
    scores[:, 0] = 0.0                        # one live beam at the start, so no duplicates
    finished = np.zeros((N, B), dtype=bool)
    lengths = np.zeros((N, B), dtype=np.int64)
    rows = np.arange(N)[:, None]
    for _ in range(max_len):
        logits, _ = model.decode(ys, memory, mask, causal=True, training=False)
        logp = log_softmax(logits[:, -1].astype(np.float64)).reshape(N, B, -1)
        V = logp.shape[-1]
        # A finished beam may only "emit" padding, at no cost: it survives with its score.
        logp[finished] = -np.inf
        logp[finished, pad_id] = 0.0
        cand = (scores[:, :, None] + logp).reshape(N, B * V)
        top = np.argsort(-cand, axis=1, kind="stable")[:, :B]
        beam, tok = top // V, top % V
        scores = np.take_along_axis(cand, top, axis=1)
        was_finished = finished[rows, beam]
        finished = was_finished | (tok == eos_id)
        lengths = lengths[rows, beam] + ~was_finished
        ys = np.concatenate([ys.reshape(N, B, -1)[rows, beam], tok[:, :, None]], axis=2)
        ys = ys.reshape(N * B, -1)
        if finished.all():
            break
    norm = scores / np.maximum(lengths, 1) ** length_penalty if length_penalty else scores
    best = np.argmax(norm, axis=1)
    return ys.reshape(N, B, -1)[np.arange(N), best, 1:]


def encode_sources(vocab, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Padded (N, S) ids and the padding mask of source strings (each checked by the vocabulary:
    empty input or characters outside it raise ValueError naming the text)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    if len(texts) == 0:
        raise ValueError("no input to translate")
    rows = []
    for text in texts:
        try:
            rows.append(vocab.encode_source(text))
        except ValueError as e:
            raise ValueError(f"cannot translate {text!r}: {e}") from None
    S = max(len(r) for r in rows)
    src = np.full((len(rows), S), vocab.pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        src[i, :len(r)] = r
    return src, src == vocab.pad_id


def translate(model, vocab, texts: Sequence[str], max_len: int, beam_size: int = 1,
              batch_size: int = 500) -> list[str]:
    """Source strings -> target strings (greedy when beam_size == 1), ``batch_size`` at a time."""
    src, mask = encode_sources(vocab, texts)
    out: list[str] = []
    for start in range(0, len(src), batch_size):
        s, m = src[start:start + batch_size], mask[start:start + batch_size]
        cut = int((~m).sum(axis=1).max())       # trim the batch to its own longest source
        s, m = s[:, :cut], m[:, :cut]
        ids = (greedy_decode(model, s, m, max_len, vocab.bos_id, vocab.eos_id, vocab.pad_id)
               if beam_size == 1 else
               beam_search(model, s, m, max_len, vocab.bos_id, vocab.eos_id, vocab.pad_id, beam_size))
        out += [vocab.decode_target(row) for row in ids]
    return out


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions identical to their reference (the whole string, no partial credit)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references")
    return sum(p == r for p, r in zip(predictions, references)) / len(references)
