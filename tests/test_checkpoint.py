"""Checkpoints: round trip, atomic replacement, every way a file can be wrong, and interop with the
equivalent PyTorch module (same logits in float64 to 1e-10 of their scale)."""

import json
import os

import numpy as np
import pytest

from numpy_ref import data
from numpy_ref.train import (CheckpointError, TrainSettings, build_model, load_checkpoint,
                             model_config, save_checkpoint, train)

VOCAB = data.Vocab()


def _config(**kw):
    return model_config(len(VOCAB), **{"d_model": 16, "heads": 2, "layers": 1, "ff": 32, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a model trained a few steps (weights moved away from their init)."""
    task = data.make_task(n_train=500, n_val=20)
    res = train(_config(), TrainSettings(steps=4, batch_size=16, n_train=500, n_val=20,
                                         eval_every=0), task, dtype=np.float32, log=None)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.npz"
    save_checkpoint(path, res.model, task.vocab, {"steps": 4})
    return path, res.model, task


def test_round_trip_is_exact(trained):
    path, model, task = trained
    ck = load_checkpoint(path)
    assert ck.model.config == model.config and ck.model.dtype == np.float32
    assert ck.vocab == task.vocab and ck.meta["steps"] == 4 and ck.meta["task"] == "numbers-to-words"
    sd, ref = ck.model.state_dict(), model.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert np.array_equal(sd[k], ref[k]), k
    b = data.take(task.val, np.arange(10))
    a, _ = model.forward(b.src, b.tgt_in, b.src_mask, b.tgt_mask, training=False)
    c, _ = ck.model.forward(b.src, b.tgt_in, b.src_mask, b.tgt_mask, training=False)
    assert np.array_equal(a, c)
    assert not ck.model.training


def test_checkpoint_matches_torch_module_in_float64(trained):
    torch = pytest.importorskip("torch", reason="torch is the oracle for checkpoint interop")
    from _torch_transformer import build_torch_model

    path, _, task = trained
    ck = load_checkpoint(path, dtype=np.float64)
    tm = build_torch_model(ck.model.config, torch.float64)
    with np.load(path) as z:
        missing, unexpected = tm.load_state_dict(
            {k[len("param/"):]: torch.from_numpy(z[k].astype(np.float64))
             for k in z.files if k.startswith("param/")}, strict=True)
    b = data.take(task.val, np.arange(len(task.val)))
    assert b.src_mask.any() and b.tgt_mask.any()            # padding on both sides
    ours, _ = ck.model.forward(b.src, b.tgt_in, b.src_mask, b.tgt_mask, training=False)
    tm.train()   # dropout is 0; train mode keeps torch off its fused inference path
    with torch.no_grad():
        ref = tm(torch.from_numpy(b.src.astype(np.int64)), torch.from_numpy(b.tgt_in.astype(np.int64)),
                 torch.from_numpy(b.src_mask), torch.from_numpy(b.tgt_mask)).numpy()
    real = ~b.tgt_mask          # torch's padded query rows are not comparable (no NaN here, but
    err = np.max(np.abs(ours - ref)[real])   # they carry no meaning); every real position is
    scale = np.max(np.abs(ref[real]))
    assert err <= 1e-10 * scale, f"max abs diff {err:.3e}, logits scale {scale:.3e}"


def test_replacing_a_checkpoint_is_atomic(trained, tmp_path, monkeypatch):
    path, model, task = trained
    target = tmp_path / "ck.npz"
    save_checkpoint(target, model, task.vocab)
    before = target.read_bytes()

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")   # a partial write, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model, task.vocab)
    assert target.read_bytes() == before                 # old checkpoint untouched
    assert os.listdir(tmp_path) == ["ck.npz"]            # no temporary file left behind
    monkeypatch.undo()
    save_checkpoint(target, model, task.vocab, {"steps": 99})
    assert load_checkpoint(target).meta["steps"] == 99
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_file(trained, tmp_path, keep):
    path, _, _ = trained
    raw = path.read_bytes()
    bad = tmp_path / "trunc.npz"
    bad.write_bytes(raw[:int(len(raw) * keep)])
    with pytest.raises(CheckpointError, match="trunc.npz: not a readable .npz"):
        load_checkpoint(bad)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        load_checkpoint(text)
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="not a tfm-kernels checkpoint"):
        load_checkpoint(other)


def _rewrite(src, dst, change):
    with np.load(src) as z:
        entries = {k: z[k] for k in z.files}
    change(entries)
    np.savez(dst, **entries)


def test_checkpoint_for_another_config(trained, tmp_path):
    path, _, _ = trained
    with pytest.raises(CheckpointError, match=r"another config: d_model 16 \(checkpoint\) != 32 "
                                              r"\(expected\); num_heads 2 \(checkpoint\) != 4"):
        load_checkpoint(path, config=_config(d_model=32, heads=4))
    assert load_checkpoint(path, config=_config()).model.config == _config()


def test_tampered_entries(trained, tmp_path):
    path, _, _ = trained
    bad = tmp_path / "bad.npz"

    def wrong_shape(e):
        e["param/linear.bias"] = np.zeros(7, np.float32)

    _rewrite(path, bad, wrong_shape)
    with pytest.raises(CheckpointError, match=r"linear.bias \(expected \(44,\), got \(7,\)\)"):
        load_checkpoint(bad)

    def dropped(e):
        del e["param/embedding.weight"]

    _rewrite(path, bad, dropped)
    with pytest.raises(CheckpointError, match="missing keys: embedding.weight"):
        load_checkpoint(bad)

    def newer(e):
        e["__format__"] = np.array(json.dumps({"format": "tfm-kernels-checkpoint", "version": 2}))

    _rewrite(path, bad, newer)
    with pytest.raises(CheckpointError, match="expected tfm-kernels-checkpoint version 1"):
        load_checkpoint(bad)

    def bad_config(e):
        e["__config__"] = np.array(json.dumps({"vocab_size": 44, "d_model": 15, "num_heads": 2,
                                               "num_encoder_layers": 1, "num_decoder_layers": 1}))

    _rewrite(path, bad, bad_config)
    with pytest.raises(CheckpointError, match="not a valid TransformerConfig.*num_heads must divide"):
        load_checkpoint(bad)

    def short_vocab(e):
        meta = json.loads(str(e["__meta__"][()]))
        meta["vocab"] = meta["vocab"][:-1]
        e["__meta__"] = np.array(json.dumps(meta))

    _rewrite(path, bad, short_vocab)
    with pytest.raises(CheckpointError, match="vocabulary of 43 tokens for a model of vocab_size 44"):
        load_checkpoint(bad)

    def swapped_vocab(e):
        meta = json.loads(str(e["__meta__"][()]))
        meta["vocab"][20], meta["vocab"][21] = meta["vocab"][21], meta["vocab"][20]
        e["__meta__"] = np.array(json.dumps(meta))

    _rewrite(path, bad, swapped_vocab)
    with pytest.raises(CheckpointError, match="not this task's \\(first difference at id 20\\)"):
        load_checkpoint(bad)

    def pickled(e):
        e["param/linear.bias"] = np.array([{"evil": 1}], dtype=object)

    _rewrite(path, bad, pickled)
    with pytest.raises(CheckpointError, match="not a readable .npz.*pickle"):
        load_checkpoint(bad)


def test_save_refuses_other_suffix(trained, tmp_path):
    _, model, task = trained
    with pytest.raises(ValueError, match="must end in .npz"):
        save_checkpoint(tmp_path / "model.pt", model, task.vocab)


def test_build_model_scales_embeddings():
    cfg = _config(d_model=64)
    m = build_model(cfg, 0, np.float64)
    # N(0, 1/d_model), padding row zero: tokens times sqrt(d_model) are about 1, like positions.
    std = m.params["embedding.weight"][1:].std()
    assert 0.8 / 8 < std < 1.2 / 8 and not m.params["embedding.weight"][0].any()
