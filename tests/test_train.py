"""The training loop and the train/translate subcommands, on tiny models and a few steps (the full
95% run is `make demo`, not a test)."""

import json
import os

import numpy as np
import pytest

from numpy_ref import data
from numpy_ref import train as train_mod
from numpy_ref.train import TrainingDiverged, TrainSettings, model_config, train
from tfm_kernels.cli import main as cli

VOCAB = data.Vocab()
TINY = ["--d-model", "16", "--heads", "2", "--layers", "1", "--ff", "32"]


@pytest.fixture(autouse=True)
def _restore_blas_threads():
    # `tfm-kernels train` sets OpenBLAS to 1 thread for the process; give later tests the count
    # they started with.
    before = _openblas_threads()
    yield
    if before is not None:
        train_mod.set_blas_threads(before)


@pytest.fixture(scope="module")
def small_task():
    return data.make_task(n_train=2000, n_val=40)


def test_loss_goes_down(small_task):
    cfg = model_config(len(VOCAB), d_model=32, heads=2, layers=1, ff=64)
    res = train(cfg, TrainSettings(steps=40, batch_size=32, lr=3e-3, warmup=10, eval_every=20,
                                   n_train=2000, n_val=40), small_task, log=None)
    loss = res.history["loss"]
    assert len(loss) == 40 and all(np.isfinite(loss))
    assert np.mean(loss[-5:]) < 0.6 * np.mean(loss[:5]), (loss[:5], loss[-5:])
    assert [s for s, _ in res.history["eval"]] == [20, 40]
    assert res.val_accuracy == res.history["eval"][-1][1]
    # The schedule the optimizer saw: linear warmup to the peak at step 10, then 1/sqrt(step).
    lr = res.history["lr"]
    assert lr[9] == pytest.approx(3e-3) and lr[0] == pytest.approx(3e-4) and lr[39] == pytest.approx(1.5e-3)


def test_same_seed_same_run_other_seed_other_run(small_task):
    cfg = model_config(len(VOCAB), d_model=16, heads=2, layers=1, ff=32)
    s = TrainSettings(steps=3, batch_size=8, eval_every=0, n_train=2000, n_val=40)
    a = train(cfg, s, small_task, log=None)
    b = train(cfg, s, small_task, log=None)
    c = train(cfg, TrainSettings(**{**s.__dict__, "seed": 1}), small_task, log=None)
    assert a.history["loss"] == b.history["loss"] != c.history["loss"]


def test_float64_training_stays_float64(small_task, tmp_path):
    cfg = model_config(len(VOCAB), d_model=16, heads=2, layers=1, ff=32)
    res = train(cfg, TrainSettings(steps=3, batch_size=8, eval_every=0, n_train=2000, n_val=40),
                small_task, dtype=np.float64, log=None)
    assert all(v.dtype == np.float64 for v in res.model.params.values())
    train_mod.save_checkpoint(tmp_path / "c.npz", res.model, VOCAB)
    assert train_mod.load_checkpoint(tmp_path / "c.npz").model.dtype == np.float64


def test_nan_loss_stops_and_names_the_step(small_task, monkeypatch):
    # Poison one output bias after two good steps: the loss of step 3 is NaN.
    real_step = train_mod.AdamW.step

    def step(self, grads, lr=None):
        real_step(self, grads, lr)
        if self.step_count == 2:
            self.params["linear.bias"][5] = np.nan

    monkeypatch.setattr(train_mod.AdamW, "step", step)
    cfg = model_config(len(VOCAB), d_model=16, heads=2, layers=1, ff=32)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 3; stopped before updating"):
        train(cfg, TrainSettings(steps=10, batch_size=8, eval_every=0, n_train=2000, n_val=40),
              small_task, log=None)


def test_cli_train_writes_everything_and_translate_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli(["train", *TINY, "--steps", "3", "--batch-size", "8", "--eval-every", "0",
              "--samples", "3", "--no-progress", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "trained 3 steps" in text and "sample translations" in text and "validation exact match" in text
    assert {p.name for p in out.iterdir()} == {"checkpoint.npz", "loss_curve.png", "history.json"}
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["loss"]) == 3 and hist["settings"]["steps"] == 3 and hist["config"]["d_model"] == 16

    rc = cli(["translate", "--checkpoint", str(out / "checkpoint.npz"), "7", "40,213", "999999"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" -> ")[0].strip() for line in lines] == ["7", "40,213", "999999"]


@pytest.mark.parametrize("args, message", [
    (["12a"], "character 'a' at position 2"),
    ([""], "empty input"),
    (["1234567"], "at most 6"),
])
def test_cli_translate_bad_input(tmp_path, capsys, args, message):
    ck = tmp_path / "ck.npz"
    m = train_mod.build_model(model_config(len(VOCAB), d_model=16, heads=2, layers=1, ff=32), 0, np.float32)
    train_mod.save_checkpoint(ck, m, VOCAB)
    assert cli(["translate", "--checkpoint", str(ck), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_translate_bad_checkpoint(tmp_path, capsys):
    assert cli(["translate", "--checkpoint", str(tmp_path / "none.npz"), "7"]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_cli_train_divergence_keeps_old_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"previous run")

    def poisoned(config, seed, dtype):
        m = train_mod.Transformer(config, seed=seed, dtype=dtype)
        m.params["linear.weight"][:] = np.inf
        return m

    monkeypatch.setattr(train_mod, "build_model", poisoned)
    rc = cli(["train", *TINY, "--steps", "3", "--batch-size", "8", "--no-progress", "--out", str(out)])
    assert rc == 1
    assert "training diverged: loss is nan at step 1" in capsys.readouterr().err
    assert (out / "checkpoint.npz").read_bytes() == b"previous run"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "steps must be a positive int"),
    (["--lr", "-1"], "lr must be > 0"),
    (["--d-model", "30", "--heads", "4"], "num_heads must divide d_model"),
    (["--batch-size", "40001"], "larger than the training set (40000 pairs)"),
    (["--threads", "-1"], "threads must be >= 0"),
])
def test_cli_train_bad_options(capsys, args, message):
    assert cli(["train", *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def _openblas_threads():
    import ctypes

    if not os.path.exists("/proc/self/maps"):
        return None
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    for lib in libs:
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads"):
            getter = getattr(ctypes.CDLL(lib), name, None)
            if getter is not None:
                return getter()
    return None


def test_set_blas_threads_takes_effect():
    before = _openblas_threads()
    if not train_mod.set_blas_threads(1) or before is None:
        pytest.skip("NumPy's BLAS here is not an OpenBLAS whose thread count can be set")
    try:
        assert _openblas_threads() == 1
    finally:
        train_mod.set_blas_threads(before)
    assert _openblas_threads() == before
