"""python -m numpy_ref.demo: the reference at work, in a few seconds, printing what it does.

1. Builds a small encoder-decoder Transformer (the seed's architecture, with a padding id) in float64.
2. Runs forward on a padded batch of a sequence-reversal task, a cross-entropy loss that ignores
   padding, and backward to every parameter.
3. Checks sampled gradient entries of every parameter tensor against central finite differences
   (dropout active, with the same masks in every evaluation).
4. Checks the blocked (FlashAttention-2) attention against the plain one, forward and backward.
5. Takes 30 SGD steps (lr 0.5, global norm clipped at 1) on the task and prints the loss falling
   (ln 10 = 2.30 is the loss of guessing uniformly among the 10 content tokens).
Exits with status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import numpy_ref as R
from numpy_ref.gradcheck import numerical_grad

PAD, BOS = 0, 1


def reversal_batch(rng, n, max_len, vocab):
    """src: random tokens (ids >= 2) of random length, padded; tgt_in: BOS + reversed src;
    tgt_out: reversed src (the next-token targets), PAD where padded."""
    lens = rng.integers(2, max_len + 1, n)
    src = np.full((n, max_len), PAD)
    tgt_in = np.full((n, max_len), PAD)
    tgt_out = np.full((n, max_len), PAD)
    for i, m in enumerate(lens):
        seq = rng.integers(2, vocab, m)
        src[i, :m] = seq
        tgt_out[i, :m] = seq[::-1]
        tgt_in[i, 0] = BOS
        tgt_in[i, 1:m] = seq[::-1][:-1]
    return src, tgt_in, tgt_out, src == PAD, tgt_in == PAD


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.5)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    ok = True

    cfg = R.TransformerConfig(vocab_size=12, d_model=32, num_heads=4, num_encoder_layers=2,
                              num_decoder_layers=2, dim_feedforward=64, dropout=0.1, pad_id=PAD)
    model = R.Transformer(cfg, seed=args.seed)
    n_params = sum(p.size for p in model.params.values())
    print(f"[1] Transformer: {cfg}")
    print(f"    {len(model.params)} parameter tensors, {n_params:,} parameters, float64")

    src, tgt_in, tgt_out, spm, tpm = reversal_batch(rng, 8, 7, cfg.vocab_size)
    t0 = time.perf_counter()
    logits, cache = model.forward(src, tgt_in, spm, tpm, rng=np.random.default_rng(7))
    loss, lcache = R.cross_entropy_forward(logits, tgt_out, ignore_index=PAD, label_smoothing=0.1)
    grads = model.backward(R.cross_entropy_backward(1.0, lcache), cache)
    dt = time.perf_counter() - t0
    gnorm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    print(f"[2] forward + loss + backward on a batch of {src.shape[0]} (lengths {(~spm).sum(1).tolist()}): "
          f"{dt * 1e3:.1f} ms")
    print(f"    loss {float(loss):.4f} (ln {cfg.vocab_size} = {np.log(cfg.vocab_size):.4f} for a uniform guess), "
          f"gradient norm {gnorm:.4f}")

    def loss_fn():
        lg, _ = model.forward(src, tgt_in, spm, tpm, rng=np.random.default_rng(7))
        return float(R.cross_entropy_forward(lg, tgt_out, ignore_index=PAD, label_smoothing=0.1)[0])

    worst, worst_name, checked = 0.0, "", 0
    for name, p in model.params.items():
        idx = rng.choice(p.size, size=min(p.size, 3), replace=False)
        if name == "embedding.weight":     # the padding row has no gradient by definition
            idx = idx[idx // cfg.d_model != PAD]
        num = numerical_grad(loss_fn, p, index=idx)
        # Relative to the tensor's gradient scale (max |dL/dp| over all of it), not to the sampled
        # entries alone: a sampled entry near 0 would otherwise turn FD rounding (~1e-10) into noise.
        scale = max(float(np.max(np.abs(grads[name]))), 1e-12)
        err = float(np.max(np.abs(grads[name].reshape(-1)[idx] - num.reshape(-1)[idx]), initial=0.0)) / scale
        checked += idx.size
        if err > worst:
            worst, worst_name = err, name
    good = worst <= 1e-6
    ok &= good
    print(f"[3] finite differences: {checked} entries over {len(model.params)} tensors, worst relative "
          f"error {worst:.2e} ({worst_name}) {'OK' if good else 'NOT OK (> 1e-6)'}")

    q, k, v = (rng.standard_normal((2, 4, L, 16)) for L in (50, 70, 70))
    do = rng.standard_normal(q.shape)
    kv_lens = np.array([70, 33])
    o, lse = R.attention_forward(q, k, v, causal=True, kv_lens=kv_lens)
    g = R.attention_backward(do, q, k, v, o, lse, causal=True, kv_lens=kv_lens)
    diffs = []
    for bq, bk in ((16, 16), (7, 64), (64, 13)):
        fo, flse = R.flash_attention_forward(q, k, v, True, kv_lens, block_q=bq, block_k=bk)
        fg = R.flash_attention_backward(do, q, k, v, o, lse, True, kv_lens, block_q=bq, block_k=bk)
        diffs.append(max(float(np.max(np.abs(a - b))) for a, b in zip((fo, flse) + fg, (o, lse) + g)))
    good = max(diffs) <= 1e-12
    ok &= good
    print(f"[4] blocked attention (Lq 50, Lk 70, causal, kv_lens {kv_lens.tolist()}, blocks 16x16, 7x64, 64x13) "
          f"vs plain: max |diff| {max(diffs):.1e} over o, lse, dq, dk, dv {'OK' if good else 'NOT OK'}")

    lr = args.lr
    losses = []
    train_rng = np.random.default_rng(args.seed + 1)
    for _ in range(args.steps):
        s, ti, to, sm, tm = reversal_batch(train_rng, 32, 7, cfg.vocab_size)
        lg, c = model.forward(s, ti, sm, tm)
        l, lc = R.cross_entropy_forward(lg, to, ignore_index=PAD)
        gr = model.backward(R.cross_entropy_backward(1.0, lc), c)
        gn = np.sqrt(sum(float(np.sum(x * x)) for x in gr.values()))
        scale = min(1.0, 1.0 / gn)          # clip the global gradient norm at 1
        for name in model.params:
            model.params[name] -= lr * scale * gr[name]
        losses.append(float(l))
    if losses:
        print(f"[5] {args.steps} SGD steps (lr {lr}, clip 1) on fresh reversal batches: loss "
              f"{losses[0]:.3f} -> {np.mean(losses[-5:]):.3f} (mean of the last 5)")
    print("all checks OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
