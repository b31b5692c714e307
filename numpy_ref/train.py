"""Train the NumPy reference Transformer on the embedded task, and translate with a checkpoint.

    tfm-kernels train [--steps N --batch-size B --d-model E --heads H --layers L --ff F --seed S
                       --dtype float32|float64 --out DIR ...]
    tfm-kernels translate --checkpoint DIR/checkpoint.npz 40213 7 "100,001"

A training run is the whole loop in plain NumPy: ``numpy_ref.Transformer.forward`` -> cross-entropy
(padding ignored) -> ``backward`` -> global-norm clipping -> AdamW with a warmup + inverse-sqrt
learning rate (numpy_ref.optim). The task is numpy_ref.data's numbers -> English words; every
``--eval-every`` steps the model greedy-decodes the 1,000 validation numbers and the exact-match
accuracy is logged. At the end the run writes, under ``--out`` (default ``runs/``):

    checkpoint.npz   state_dict() + the model config + the vocabulary + run metadata (see below)
    loss_curve.png   training loss per step (and its running mean) with validation accuracy
    history.json     the numbers behind the plot

and prints sample translations from the validation set.

Checkpoint format (an .npz, loaded with allow_pickle=False): ``param/<name>`` for every entry of
``state_dict()``, and three JSON strings: ``__format__`` (name and version), ``__config__``
(TransformerConfig fields) and ``__meta__`` (vocabulary, task, data seed, step, accuracy). It is
written to a temporary file in the same directory and renamed over the target, so an existing
checkpoint is replaced whole or not at all. A loss or gradient norm that is not finite stops the run
with the step number, before the update and before anything is written.

Nothing here imports tfm_kernels or CuPy: training needs NumPy (plus tqdm and matplotlib for the
progress bar and the plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from . import data as data_mod
from .decode import exact_match, greedy_decode, translate
from .loss import cross_entropy_backward, cross_entropy_forward
from .optim import AdamW, clip_grad_norm_, warmup_inverse_sqrt
from .transformer import Transformer, TransformerConfig, parameter_shapes

__all__ = ["TrainSettings", "TrainResult", "TrainingDiverged", "CheckpointError", "build_model",
           "train", "evaluate", "save_checkpoint", "load_checkpoint", "plot_history",
           "add_train_arguments", "run_train", "add_translate_arguments", "run_translate"]

CHECKPOINT_FORMAT = "tfm-kernels-checkpoint"
CHECKPOINT_VERSION = 1
TASK_NAME = "numbers-to-words"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite; nothing was updated or written."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, truncated, foreign, or for another model."""


# ---------------------------------------------------------------------------------------- threads
_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads")


def set_blas_threads(n: int) -> bool:
    """Ask the OpenBLAS that NumPy loaded to use ``n`` threads (what OPENBLAS_NUM_THREADS does, but
    after import). Returns False where that is not possible (another BLAS, not Linux).

    Why: this model's products are small (the largest is 704 x 64 by 64 x 256 per step at batch 64),
    so a second BLAS thread gains little, and when the other core is busy it costs a lot: on this
    project's 2-core machine under load, one training step took 1.37 s with OpenBLAS's default 2
    threads and 0.19 s with 1 (median of 30 steps)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    for lib in sorted(libs):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            setter = getattr(handle, name, None)
            if setter is not None:
                setter(ctypes.c_int(int(n)))
                return True
    return False


# ---------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything about a run except the model's shape. The defaults are the ``tfm-kernels train``
    defaults (see docs/training.md for how they were chosen)."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3             # peak learning rate, reached at the end of warmup
    warmup: int = 100
    weight_decay: float = 0.0
    clip: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    eval_every: int = 100        # 0: only at the end
    n_train: int = 40_000
    n_val: int = 1_000

    def __post_init__(self):
        for name in ("steps", "batch_size", "warmup", "n_train", "n_val"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"eval_every must be an int >= 0, got {self.eval_every!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for name in ("lr", "clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.weight_decay:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size {self.batch_size} is larger than the training set "
                             f"({self.n_train} pairs)")


def model_config(vocab_size: int, d_model: int = 64, heads: int = 4, layers: int = 2,
                 ff: int = 256, dropout: float = 0.0) -> TransformerConfig:
    """The model ``tfm-kernels train`` builds: the seed's post-norm encoder-decoder with a
    sinusoidal positional encoding (the task is about positions) and padding id 0."""
    return TransformerConfig(vocab_size=vocab_size, d_model=d_model, num_heads=heads,
                             num_encoder_layers=layers, num_decoder_layers=layers,
                             dim_feedforward=ff, dropout=dropout, activation="relu",
                             norm_first=False, positional_encoding="sinusoidal", final_norm=False,
                             pad_id=data_mod.Vocab.pad_id)


def build_model(config: TransformerConfig, seed: int, dtype) -> Transformer:
    """A fresh model whose token embeddings start as N(0, 1/d_model) instead of nn.Embedding's
    N(0, 1): the model multiplies them by sqrt(d_model) before adding the sinusoidal encoding, so
    this makes tokens and positions the same size (about 1 per coordinate), as in the paper's
    setup. With N(0, 1) the tokens start 8x larger than the positions at d_model 64 and the model
    spends its first few hundred steps shrinking them before it can align digits and words."""
    model = Transformer(config, seed=seed, dtype=dtype)
    if config.positional_encoding == "sinusoidal":
        model.params["embedding.weight"] *= model.dtype.type(config.d_model ** -0.5)
    return model


# ---------------------------------------------------------------------------------------- loop
@dataclasses.dataclass
class TrainResult:
    model: Transformer
    history: dict          # "loss", "lr", "grad_norm" per step; "eval": [[step, accuracy], ...]
    val_accuracy: float
    val_predictions: list  # greedy translations of the validation split after the last step
    seconds: float


def evaluate(model: Transformer, split: data_mod.Split, vocab: data_mod.Vocab,
             batch_size: int = 500) -> tuple[float, list[str]]:
    """Exact-match accuracy of greedy decoding over a split, and the predictions."""
    preds: list[str] = []
    for start in range(0, len(split), batch_size):
        idx = np.arange(start, min(start + batch_size, len(split)))
        s = int(split.src_len[idx].max())
        src = split.src[idx, :s]
        ids = greedy_decode(model, src, src == vocab.pad_id, data_mod.MAX_TARGET_LEN,
                            vocab.bos_id, vocab.eos_id, vocab.pad_id)
        preds += [vocab.decode_target(row) for row in ids]
    return exact_match(preds, split.targets), preds


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the train and test extras
        print("(install tqdm for a progress bar: pip install 'tfm-kernels[train]')", file=sys.stderr)
        return None
    return tqdm(total=total, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)


def train(config: TransformerConfig, settings: TrainSettings, task: data_mod.Task | None = None,
          dtype=np.float32, progress: bool = False, log=print) -> TrainResult:
    """Train a fresh model; returns it with the per-step history. Raises TrainingDiverged (naming
    the step) when the loss or gradient norm is not finite; the weights are then left as they were
    after the last good step."""
    task = task or data_mod.make_task(n_train=settings.n_train, n_val=settings.n_val)
    vocab = task.vocab
    if config.vocab_size != len(vocab):
        raise ValueError(f"config.vocab_size is {config.vocab_size}, the task's vocabulary has {len(vocab)}")
    model = build_model(config, settings.seed, dtype)
    opt = AdamW(model.params, lr=settings.lr, betas=(0.9, 0.98), eps=1e-9,
                weight_decay=settings.weight_decay)
    batch_rng = np.random.default_rng([settings.seed, 2])
    batches = data_mod.batches(task.train, settings.batch_size, batch_rng, vocab.pad_id)
    history = {"loss": [], "lr": [], "grad_norm": [], "eval": []}
    one = model.dtype.type(1.0)
    bar = _progress(settings.steps, progress)
    running = None
    t0 = time.perf_counter()
    try:
        for step in range(1, settings.steps + 1):
            b = next(batches)
            logits, cache = model.forward(b.src, b.tgt_in, b.src_mask, b.tgt_mask)
            loss, loss_cache = cross_entropy_forward(logits, b.tgt_out, ignore_index=vocab.pad_id,
                                                     label_smoothing=settings.label_smoothing)
            loss = float(loss)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step}; stopped before updating "
                                       f"the weights, no checkpoint written (try a lower --lr)")
            grads = model.backward(cross_entropy_backward(one, loss_cache), cache)
            norm = clip_grad_norm_(grads, settings.clip)
            if not math.isfinite(norm):
                raise TrainingDiverged(f"gradient norm is {norm} at step {step} (loss {loss:.4g}); "
                                       f"stopped before updating the weights, no checkpoint written")
            lr = warmup_inverse_sqrt(step, settings.lr, settings.warmup)
            opt.step(grads, lr=lr)
            history["loss"].append(loss)
            history["lr"].append(lr)
            history["grad_norm"].append(norm)
            # Running loss for the bar: an exponential mean over about the last 50 steps.
            running = loss if running is None else 0.96 * running + 0.04 * loss
            if bar is not None:
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)
            if (settings.eval_every and step % settings.eval_every == 0) or step == settings.steps:
                acc, preds = evaluate(model, task.val, vocab)
                history["eval"].append([step, acc])
                msg = f"step {step:5d}  loss {running:.4f}  val exact match {acc:6.1%}"
                if bar is not None:
                    bar.write(msg, file=sys.stdout)   # a log line: stdout, like the summary
                elif log:
                    log(msg)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    return TrainResult(model, history, history["eval"][-1][1], preds, seconds)


# ---------------------------------------------------------------------------------------- checkpoint
def save_checkpoint(path, model: Transformer, vocab: data_mod.Vocab, meta: dict | None = None) -> Path:
    """Write ``model``'s state_dict, config and ``vocab`` to ``path`` atomically (temporary file in
    the same directory, fsync, rename): readers see the old file or the new one, never a mix."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"checkpoint path must end in .npz, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    arrays["__format__"] = np.array(json.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}))
    arrays["__config__"] = np.array(json.dumps(dataclasses.asdict(model.config)))
    full_meta = {"task": TASK_NAME, "vocab": list(vocab.tokens), "dtype": str(model.dtype)}
    full_meta.update(meta or {})
    arrays["__meta__"] = np.array(json.dumps(full_meta))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@dataclasses.dataclass
class Checkpoint:
    model: Transformer
    vocab: data_mod.Vocab
    meta: dict


def _json_entry(z, key, path):
    try:
        return json.loads(str(z[key][()]))
    except (KeyError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: entry {key} is missing or unreadable ({e})") from None


def load_checkpoint(path, config: TransformerConfig | None = None, dtype=None) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint into a new model (in ``dtype``, default the
    dtype it was trained in). With ``config``, refuse a checkpoint of any other config, naming
    every field that differs. Every problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as z:
            entries = {k: z[k] for k in z.files}   # reads everything: a truncated member fails here
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file (truncated or not a checkpoint: "
                              f"{type(e).__name__}: {e})") from None
    if "__format__" not in entries:
        raise CheckpointError(f"{path}: an .npz without a __format__ entry, not a tfm-kernels "
                              f"checkpoint (entries: {sorted(entries)[:5]}...)")
    fmt = _json_entry(entries, "__format__", path)
    if fmt.get("format") != CHECKPOINT_FORMAT or fmt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: format {fmt}, expected {CHECKPOINT_FORMAT} version "
                              f"{CHECKPOINT_VERSION}")
    try:
        stored = TransformerConfig(**_json_entry(entries, "__config__", path))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: stored config is not a valid TransformerConfig ({e})") from None
    if config is not None and stored != config:
        diffs = [f"{f.name} {getattr(stored, f.name)!r} (checkpoint) != {getattr(config, f.name)!r} (expected)"
                 for f in dataclasses.fields(TransformerConfig)
                 if getattr(stored, f.name) != getattr(config, f.name)]
        raise CheckpointError(f"{path}: checkpoint from another config: " + "; ".join(diffs))
    meta = _json_entry(entries, "__meta__", path)
    if meta.get("task") != TASK_NAME:
        raise CheckpointError(f"{path}: trained on task {meta.get('task')!r}, not {TASK_NAME!r}")
    try:
        vocab = data_mod.Vocab(tuple(meta["vocab"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: stored vocabulary is unusable ({e})") from None
    if len(vocab) != stored.vocab_size:
        raise CheckpointError(f"{path}: vocabulary of {len(vocab)} tokens for a model of vocab_size "
                              f"{stored.vocab_size}")
    if vocab != data_mod.Vocab():
        # The tokenizer's rules (characters, words, special ids) are this module's: a checkpoint
        # with another token list would map ids to the wrong words.
        diff = [i for i, (a, b) in enumerate(zip(vocab.tokens, data_mod.Vocab().tokens)) if a != b]
        raise CheckpointError(f"{path}: its vocabulary is not this task's (first difference at id "
                              f"{diff[0] if diff else len(vocab)})")
    params = {k[len("param/"):]: v for k, v in entries.items() if k.startswith("param/")}
    model = Transformer(stored, seed=0, dtype=dtype or meta.get("dtype", "float32"))
    try:
        model.load_state_dict(params)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    model.eval()
    return Checkpoint(model, vocab, meta)


# ---------------------------------------------------------------------------------------- plot
def plot_history(history: dict, path, title: str = "") -> Path:
    """Training loss per step (faint), its running mean, and validation exact match (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = np.asarray(history["loss"])
    steps = np.arange(1, len(loss) + 1)
    k = max(1, min(50, len(loss) // 10))
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="loss (per step)")
    ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.8, label=f"loss (mean of {k} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (padding ignored)")
    ax.grid(alpha=0.3, which="both")
    handles, labels = ax.get_legend_handles_labels()
    if history.get("eval"):
        ev = np.asarray(history["eval"], dtype=float)
        ax2 = ax.twinx()
        ax2.plot(ev[:, 0], 100 * ev[:, 1], "o-", color="tab:orange", label="validation exact match")
        ax2.set_ylabel("validation exact match (%)")
        ax2.set_ylim(0, 100)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="lower left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------- CLI
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainSettings()
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.description = ("Train the NumPy reference Transformer to write numbers in English words "
                     "(digits -> words), then print sample translations.")
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=int, default=64, metavar="E", help="embedding width")
    g.add_argument("--heads", type=int, default=4, metavar="H", help="attention heads")
    g.add_argument("--layers", type=int, default=2, metavar="L",
                   help="encoder layers and decoder layers (each)")
    g.add_argument("--ff", type=int, default=256, metavar="F", help="feed-forward width")
    g.add_argument("--dropout", type=float, default=0.0, metavar="P", help="dropout probability")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float32 trains about 1.7x faster; float64 is the reference precision")
    g.add_argument("--threads", type=int, default=1, metavar="N",
                   help="OpenBLAS threads (0: leave its default); the products are small, and a "
                        "second thread is 7x slower when the other core is busy")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=d.steps, metavar="N", help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=d.batch_size, metavar="B",
                   help="examples per step")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW)")
    g.add_argument("--warmup", type=int, default=d.warmup, metavar="N",
                   help="linear warmup steps, then 1/sqrt(step)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="WD",
                   help="AdamW weight decay")
    g.add_argument("--clip", type=float, default=d.clip, metavar="NORM",
                   help="global gradient-norm clip")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, metavar="EPS",
                   help="cross-entropy label smoothing")
    g.add_argument("--seed", type=int, default=d.seed, help="initialization, batch order and dropout")
    g = p.add_argument_group("output")
    g.add_argument("--eval-every", type=int, default=d.eval_every, metavar="N",
                   help="greedy-decode the validation set every N steps (0: only at the end)")
    g.add_argument("--out", type=Path, default=Path("runs"), metavar="DIR",
                   help="directory for checkpoint.npz, loss_curve.png, history.json")
    g.add_argument("--samples", type=int, default=8, metavar="N", help="validation translations printed at the end")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def _print_samples(preds: list[str], val: data_mod.Split, count: int) -> None:
    """Up to ``count`` validation translations: half of them wrong ones when there are any."""
    if count <= 0:
        return
    wrong = [i for i in range(len(val)) if preds[i] != val.targets[i]]
    right = [i for i in range(len(val)) if preds[i] == val.targets[i]]
    chosen = wrong[: count // 2] + right[: count - min(len(wrong), count // 2)]
    width = max((len(val.sources[i]) for i in chosen), default=0)
    print(f"\nsample translations ({len(wrong)} of {len(val)} validation numbers wrong):")
    for i in chosen:
        mark = "ok " if preds[i] == val.targets[i] else "BAD"
        line = f"  {mark} {val.sources[i]:>{width}} -> {preds[i]}"
        if preds[i] != val.targets[i]:
            line += f"   (expected: {val.targets[i]})"
        print(line)


def run_train(args) -> int:
    try:
        config = model_config(len(data_mod.Vocab()), args.d_model, args.heads, args.layers, args.ff,
                              args.dropout)
        settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                 warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip,
                                 label_smoothing=args.label_smoothing, seed=args.seed,
                                 eval_every=args.eval_every)
        if args.threads < 0:
            raise ValueError(f"threads must be >= 0, got {args.threads}")
    except ValueError as e:
        print(f"tfm-kernels train: {e}", file=sys.stderr)
        return 2
    if args.threads > 0 and not set_blas_threads(args.threads):
        print(f"(could not set the BLAS thread count to {args.threads}; using NumPy's default)")
    task = data_mod.make_task(n_train=settings.n_train, n_val=settings.n_val)
    n_params = sum(math.prod(s) for s in parameter_shapes(config).values())
    print(f"task: {TASK_NAME}: {len(task.train):,} training pairs, {len(task.val):,} validation "
          f"numbers, vocabulary {len(task.vocab)}")
    print(f"model: d_model {config.d_model}, {config.num_heads} heads, {config.num_encoder_layers}+"
          f"{config.num_decoder_layers} layers, ff {config.dim_feedforward}, {n_params:,} parameters, "
          f"{args.dtype}")
    print(f"training: {settings.steps} steps x {settings.batch_size}, AdamW peak lr {settings.lr:g} "
          f"after {settings.warmup} warmup steps, seed {settings.seed}")
    try:
        result = train(config, settings, task, dtype=np.dtype(args.dtype),
                       progress=not args.no_progress, log=print)
    except TrainingDiverged as e:
        print(f"tfm-kernels train: training diverged: {e}", file=sys.stderr)
        return 1
    acc = result.val_accuracy
    print(f"trained {settings.steps} steps in {result.seconds:.1f} s "
          f"({settings.steps / result.seconds:.1f} steps/s); validation exact match {acc:.1%}")
    out = Path(args.out)
    meta = {"data_seed": task.seed, "steps": settings.steps, "val_exact_match": acc,
            "settings": dataclasses.asdict(settings), "seconds": result.seconds}
    ckpt = save_checkpoint(out / "checkpoint.npz", result.model, task.vocab, meta)
    with open(out / "history.json", "w") as f:
        json.dump({"settings": meta["settings"], "config": dataclasses.asdict(config),
                   "seconds": result.seconds, **result.history}, f)
    title = (f"numpy_ref Transformer, numbers -> words (d_model {config.d_model}, "
             f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, {args.dtype})\n"
             f"{acc:.1%} validation exact match after {settings.steps} steps, {result.seconds:.0f} s")
    png = plot_history(result.history, out / "loss_curve.png", title)
    _print_samples(result.val_predictions, task.val, args.samples)
    print(f"\nwrote {ckpt}, {png}, {out / 'history.json'}")
    print(f"try: tfm-kernels translate --checkpoint {ckpt} 40213 7 100,001")
    return 0


def add_translate_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Write numbers in English words with a trained checkpoint."
    p.add_argument("--checkpoint", type=Path, default=Path("runs/checkpoint.npz"), metavar="FILE",
                   help="a checkpoint.npz written by tfm-kernels train")
    p.add_argument("--beam", type=int, default=1, metavar="B", help="beam size (1: greedy)")
    p.add_argument("text", nargs="+", help=f"numbers in digits, 0 to {10 ** data_mod.MAX_DIGITS - 1:,} "
                                           "(with or without thousands separators)")


def run_translate(args) -> int:
    try:
        ck = load_checkpoint(args.checkpoint)
        outs = translate(ck.model, ck.vocab, args.text, data_mod.MAX_TARGET_LEN, beam_size=args.beam)
    except (CheckpointError, ValueError) as e:
        print(f"tfm-kernels translate: {e}", file=sys.stderr)
        return 2
    width = max(len(t.strip()) for t in args.text)
    for text, out in zip(args.text, outs):
        print(f"{text.strip():>{width}} -> {out}")
    return 0
