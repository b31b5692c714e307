"""numpy_ref.optim against torch.optim: same weights, same gradients, several steps, float64, 1e-12.

Gradients change every step (a fixed quadratic-plus-noise sequence drawn up front) so the moment
buffers, bias corrections and momentum are all exercised; shapes are awkward (1, 17x3, 5x7x2)."""

import math

import numpy as np
import pytest

from numpy_ref import optim

torch = pytest.importorskip("torch", reason="torch is the CPU oracle for the optimizer tests")

SHAPES = {"w": (17, 3), "b": (1,), "t": (5, 7, 2)}
STEPS = 7


def _problem(rng):
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    # Gradients with very different scales per tensor, so Adam's per-coordinate scaling matters.
    grads = [{k: rng.standard_normal(s) * 10.0 ** rng.integers(-3, 2) for k, s in SHAPES.items()}
             for _ in range(STEPS)]
    return params, grads


def _run_both(rng, ours_cls, torch_cls, kwargs, lrs=None):
    params, grads = _problem(rng)
    ours = {k: v.copy() for k, v in params.items()}
    theirs = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    opt = ours_cls(ours, **kwargs)
    topt = torch_cls(list(theirs.values()), **kwargs)
    for i, g in enumerate(grads):
        lr = None if lrs is None else lrs[i]
        opt.step({k: v.copy() for k, v in g.items()}, lr=lr)
        for k, t in theirs.items():
            t.grad = torch.tensor(g[k])
        if lr is not None:
            for group in topt.param_groups:
                group["lr"] = lr
        topt.step()
        for k in SHAPES:
            ref = theirs[k].detach().numpy()
            err = np.max(np.abs(ours[k] - ref))
            assert err <= 1e-12 * max(1.0, np.max(np.abs(ref))), (
                f"{ours_cls.__name__}{kwargs} step {i + 1} param {k}: max err {err:.3e}")
    # The update actually moved the weights (a test that cannot pass by doing nothing).
    assert all(np.max(np.abs(ours[k] - params[k])) > 1e-6 for k in SHAPES)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
])
def test_sgd_matches_torch(rng, kwargs):
    _run_both(rng, optim.SGD, torch.optim.SGD, kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.98), eps=1e-9),
    dict(lr=1e-2, weight_decay=1e-2),
    dict(lr=1e-2, amsgrad=True, weight_decay=1e-3),
])
def test_adam_matches_torch(rng, kwargs):
    _run_both(rng, optim.Adam, torch.optim.Adam, kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(lr=1e-2),
    dict(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98)),
    dict(lr=1e-2, amsgrad=True),
])
def test_adamw_matches_torch(rng, kwargs):
    _run_both(rng, optim.AdamW, torch.optim.AdamW, kwargs)


def test_adam_with_schedule_matches_torch(rng):
    # A changing lr every step, as the training loop drives it.
    lrs = [optim.warmup_inverse_sqrt(s, 1e-2, 3) for s in range(1, STEPS + 1)]
    _run_both(rng, optim.AdamW, torch.optim.AdamW, dict(lr=lrs[0], weight_decay=0.05), lrs=lrs)


def test_float32_params_stay_float32(rng):
    p = {"w": rng.standard_normal((4, 3)).astype(np.float32)}
    opt = optim.Adam(p, lr=1e-2)
    w = p["w"]
    opt.step({"w": rng.standard_normal((4, 3)).astype(np.float32)})
    assert p["w"] is w and w.dtype == np.float32 and opt.exp_avg["w"].dtype == np.float32


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(rng, max_norm):
    grads = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    ts = [torch.tensor(g.copy(), requires_grad=True) for g in grads.values()]
    for t, g in zip(ts, grads.values()):
        t.grad = torch.tensor(g.copy())
    ref_norm = torch.nn.utils.clip_grad_norm_(ts, max_norm).item()
    norm = optim.clip_grad_norm_(grads, max_norm)
    assert abs(norm - ref_norm) <= 1e-12 * ref_norm
    for t, g in zip(ts, grads.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-13, atol=0)
    after = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    assert after <= max_norm * (1 + 1e-9) or after == pytest.approx(norm)


def test_clip_grad_norm_nonfinite_leaves_grads_alone():
    grads = {"a": np.array([1.0, np.nan]), "b": np.array([3.0])}
    assert math.isnan(optim.clip_grad_norm_(grads, 1.0))
    assert grads["b"][0] == 3.0


def test_warmup_inverse_sqrt_is_the_paper_schedule():
    d_model, warmup = 512, 4000
    peak = d_model ** -0.5 * warmup ** -0.5
    for step in (1, 2, 100, 3999, 4000, 4001, 10_000, 10 ** 6):
        ours = optim.warmup_inverse_sqrt(step, peak, warmup)
        assert ours == pytest.approx(optim.noam_lr(step, d_model, warmup), rel=1e-12)
    lrs = [optim.warmup_inverse_sqrt(s, 1.0, 10) for s in range(1, 40)]
    assert max(lrs) == lrs[9] == 1.0                      # peak at the end of warmup
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # rising during warmup
    assert all(a > b for a, b in zip(lrs[9:], lrs[10:]))   # then 1/sqrt(step)


def test_bad_input_is_named(rng):
    p = {"w": np.zeros((2, 2))}
    with pytest.raises(ValueError, match="lr"):
        optim.Adam(p, lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="params\\['i'\\]"):
        optim.SGD({"i": np.zeros(3, dtype=np.int64)})
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(p, nesterov=True)
    opt = optim.SGD(p, lr=0.1)
    with pytest.raises(KeyError, match="missing \\['w'\\].*unexpected \\['v'\\]"):
        opt.step({"v": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="grads\\['w'\\] has shape \\(2, 3\\)"):
        opt.step({"w": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="step is 1-based"):
        optim.warmup_inverse_sqrt(0, 1.0, 10)
