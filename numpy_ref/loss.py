"""Cross-entropy over the last axis, torch's F.cross_entropy(reduction="mean") semantics.

    cross_entropy_forward(logits, targets, ignore_index=-100, label_smoothing=0.0) -> (loss, cache)
        logits (..., C) float, targets (...) int in [0, C) or == ignore_index
        per token:  (1 - eps) * (-log p[t]) + eps * mean_c(-log p[c])      eps = label_smoothing
        loss = sum over non-ignored tokens / number of non-ignored tokens   (a 0-d array)
    cross_entropy_backward(dloss, cache) -> dlogits
        dlogits = dloss * (softmax(logits) - ((1 - eps) onehot(t) + eps / C)) / count, 0 on ignored

When every token is ignored torch returns NaN (0 / 0); here the loss is 0 and the gradient 0, so a
batch of pure padding cannot poison a training run (documented divergence; the tests skip it).
"""

from __future__ import annotations

import numpy as np

from . import _check
from .softmax import log_softmax


def cross_entropy_forward(logits, targets, ignore_index=-100, label_smoothing=0.0):
    logits = _check.float_array(logits, "logits")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty class axis (last), got shape {logits.shape}")
    C = logits.shape[-1]
    targets = _check.int_array(targets, "targets")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets must have shape logits.shape[:-1] = {logits.shape[:-1]}, got {targets.shape}")
    ignore_index = _check.integer(ignore_index, "ignore_index")
    eps = _check.real(label_smoothing, "label_smoothing", lo=0.0, hi=1.0)
    keep = targets != ignore_index
    bad = keep & ((targets < 0) | (targets >= C))
    if np.any(bad):
        raise ValueError(f"targets must be in [0, {C}) or equal ignore_index={ignore_index}, got {targets[bad][:8].tolist()}")
    logp = log_softmax(logits)
    safe_t = np.where(keep, targets, 0)
    nll = -np.take_along_axis(logp, safe_t[..., None], axis=-1)[..., 0]
    per_token = (1.0 - eps) * nll
    if eps > 0:
        per_token = per_token + eps * (-logp.mean(axis=-1))
    count = int(keep.sum())
    loss = np.sum(np.where(keep, per_token, 0.0)) / max(count, 1)
    return np.asarray(loss, dtype=logits.dtype), (logp, safe_t, keep, count, eps)


def cross_entropy_backward(dloss, cache):
    logp, safe_t, keep, count, eps = cache
    dloss = _check.scalar(dloss, "dloss")
    C = logp.shape[-1]
    dt = logp.dtype
    g = np.exp(logp)                                         # softmax
    if eps > 0:
        g -= dt.type(eps / C)
    np.put_along_axis(g, safe_t[..., None], np.take_along_axis(g, safe_t[..., None], axis=-1) - dt.type(1.0 - eps), axis=-1)
    g *= (keep * dt.type(dloss / max(count, 1)))[..., None].astype(dt)
    return g
