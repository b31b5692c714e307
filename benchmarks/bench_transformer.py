"""benchmarks/bench_transformer.py: one training step of numpy_ref.Transformer beside the same model
in torch on the CPU, in the same run (the issue's target: numpy_ref within 2x of torch).

    pytest benchmarks/bench_transformer.py --benchmark-columns=median,min,rounds
    python benchmarks/bench_transformer.py [--rounds 5]   # interleaved: numpy_ref, torch, numpy_ref, ...

Model: d_model 256, 4 heads, 3 + 3 layers, dim_feedforward 1024, vocab 1000, ReLU, post-norm (torch's
defaults); batch 32, source and target length 64, float32. A step is forward, cross-entropy (with
label smoothing 0.1) and backward, with dropout 0 and 0.1 (training mode). Both models hold the same
weights; before timing, the float32 logits and the loss of numpy_ref are checked against torch
(dropout 0): relative 1e-4 (float32 through 6 layers).

The torch result carries extra_info["numpy_ref/torch"], the ratio of the two medians of that
dropout setting (numpy_ref runs first). pytest-benchmark times all rounds of one implementation
before the other, so on a shared machine a change of load between them skews the ratio; the script
mode alternates the two step by step and is the figure to quote from such a machine. Threads: NumPy's BLAS and torch each use the machine's cores
(torch.get_num_threads() is recorded). NumPy's elementwise work is single-threaded; torch's is not.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import numpy_ref as R

torch = pytest.importorskip("torch", reason="torch is the CPU oracle: pip install torch==2.13.0")
pytest.importorskip("pytest_benchmark")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _torch_transformer import build_torch_model  # noqa: E402

N, L, VOCAB = 32, 64, 1000
_medians: dict[tuple[str, float], float] = {}


def _config(dropout):
    return R.TransformerConfig(vocab_size=VOCAB, d_model=256, num_heads=4, num_encoder_layers=3,
                               num_decoder_layers=3, dim_feedforward=1024, dropout=dropout)


def _setup(dropout):
    cfg = _config(dropout)
    tm = build_torch_model(cfg, torch.float32).train()
    model = R.Transformer(cfg, dtype=np.float32)
    model.load_state_dict(tm.state_dict())
    rng = np.random.default_rng(0)
    src = rng.integers(0, VOCAB, (N, L))
    tgt = rng.integers(0, VOCAB, (N, L))
    targets = rng.integers(0, VOCAB, (N, L))
    return cfg, tm, model, src, tgt, targets


def _numpy_step(model, src, tgt, targets):
    logits, cache = model.forward(src, tgt)
    loss, lcache = R.cross_entropy_forward(logits, targets, label_smoothing=0.1)
    return loss, model.backward(R.cross_entropy_backward(1.0, lcache), cache)


def _torch_step(tm, src, tgt, targets):
    tm.zero_grad(set_to_none=True)
    logits = tm(src, tgt)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), label_smoothing=0.1)
    loss.backward()
    return loss


def _validate():
    _, tm, model, src, tgt, targets = _setup(0.0)
    model.eval()
    tm.eval()
    with torch.no_grad():
        tlogits = tm(torch.from_numpy(src), torch.from_numpy(tgt)).numpy()
    logits, _ = model.forward(src, tgt)
    err = np.max(np.abs(logits - tlogits)) / np.max(np.abs(tlogits))
    assert err <= 1e-4, f"numpy_ref float32 logits differ from torch by {err:.2e} (relative)"


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("impl", ["numpy_ref", "torch"])
def test_training_step(benchmark, impl, dropout):
    if not _medians:
        _validate()
    _, tm, model, src, tgt, targets = _setup(dropout)
    benchmark.group = f"training step, dropout {dropout}"
    benchmark.extra_info.update({"torch_threads": torch.get_num_threads(), "batch": N, "length": L,
                                 "dtype": "float32"})
    if impl == "numpy_ref":
        fn = lambda: _numpy_step(model, src, tgt, targets)
    else:
        ts, tt, tg = (torch.from_numpy(a) for a in (src, tgt, targets))
        fn = lambda: _torch_step(tm, ts, tt, tg)
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1, iterations=1)
    _medians[(impl, dropout)] = benchmark.stats.stats.median
    if impl == "torch" and ("numpy_ref", dropout) in _medians:
        ratio = _medians[("numpy_ref", dropout)] / _medians[("torch", dropout)]
        benchmark.extra_info["numpy_ref/torch"] = round(ratio, 3)
        print(f"\nnumpy_ref / torch training step, dropout {dropout}: {ratio:.2f}x")


def main(argv=None) -> int:
    import argparse
    import time

    ap = argparse.ArgumentParser(description="numpy_ref vs torch CPU training step, interleaved")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    args = ap.parse_args(argv)
    _validate()
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}; "
          f"batch {N}, length {L}, d_model 256, 4 heads, 3+3 layers, ff 1024, vocab {VOCAB}, float32")
    for dropout in args.dropout:
        _, tm, model, src, tgt, targets = _setup(dropout)
        ts, tt, tg = (torch.from_numpy(a) for a in (src, tgt, targets))
        steps = {"numpy_ref": lambda: _numpy_step(model, src, tgt, targets),
                 "torch": lambda: _torch_step(tm, ts, tt, tg)}
        times = {k: [] for k in steps}
        for f in steps.values():                      # warm-up
            f()
        for _ in range(args.rounds):
            for k, f in steps.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"dropout {dropout}: numpy_ref {med['numpy_ref']:.2f} s, torch {med['torch']:.2f} s (medians of "
              f"{args.rounds}) -> numpy_ref / torch = {med['numpy_ref'] / med['torch']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
