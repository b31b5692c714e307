"""Optimizers, gradient clipping and the learning-rate schedule for training the NumPy reference.

Every update rule is torch's, operation for operation, so a NumPy run and a torch run that start from
the same weights and see the same gradients stay equal to rounding (tests/test_optim.py checks 1e-12
in float64 over several steps against torch.optim):

    SGD    torch.optim.SGD   momentum, dampening, nesterov, L2 weight decay added to the gradient
    Adam   torch.optim.Adam  bias-corrected moments, eps added after the sqrt, optional amsgrad
    AdamW  torch.optim.AdamW  as Adam, but weight decay multiplies the parameter by (1 - lr * wd)
    clip_grad_norm_          torch.nn.utils.clip_grad_norm_ (global L2 norm, coef max/(norm+1e-6))
    warmup_inverse_sqrt      "Attention Is All You Need" eq. 3: linear warmup, then 1/sqrt(step)

Parameters and gradients are dicts of arrays keyed like ``Transformer.state_dict()``. The optimizer
updates the parameter arrays in place (so a model that holds the same arrays sees the update) and
keeps its moment buffers in the parameters' dtype, as torch does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["SGD", "Adam", "AdamW", "clip_grad_norm_", "warmup_inverse_sqrt", "noam_lr"]


def _check_params(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping) or not params:
        raise TypeError("params must be a non-empty dict of name -> float ndarray")
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
            raise TypeError(f"params[{name!r}] must be a float32 or float64 ndarray, "
                            f"got {type(p).__name__} {getattr(p, 'dtype', '')}")
        if not p.flags.writeable:
            raise ValueError(f"params[{name!r}] is read-only; the optimizer updates in place")
    return dict(params)


def _check_hyper(name: str, value: float, low: float = 0.0, high: float = math.inf,
                 high_open: bool = False) -> float:
    value = float(value)
    if not (low <= value and (value < high if high_open else value <= high)):
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


class Optimizer:
    """Base class: holds the parameter dict, checks each step's gradients against it."""

    def __init__(self, params: Mapping[str, np.ndarray], lr: float):
        self.params = _check_params(params)
        self.lr = _check_hyper("lr", lr)
        self.step_count = 0

    def _check_grads(self, grads: Mapping[str, np.ndarray]) -> None:
        missing = sorted(set(self.params) - set(grads))
        extra = sorted(set(grads) - set(self.params))
        if missing or extra:
            raise KeyError(f"grads do not match params: missing {missing}, unexpected {extra}")
        for name, p in self.params.items():
            g = grads[name]
            if not isinstance(g, np.ndarray) or g.shape != p.shape:
                raise ValueError(f"grads[{name!r}] has shape {getattr(g, 'shape', None)}, "
                                 f"param has {p.shape}")

    def step(self, grads: Mapping[str, np.ndarray], lr: float | None = None) -> None:
        """One update of every parameter from ``grads``; ``lr`` overrides the learning rate for
        this and later steps (how a schedule drives the optimizer)."""
        self._check_grads(grads)
        if lr is not None:
            self.lr = _check_hyper("lr", lr)
        self.step_count += 1
        for name, p in self.params.items():
            self._update(name, p, np.asarray(grads[name], dtype=p.dtype))

    def _update(self, name: str, p: np.ndarray, g: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD: ``g += wd*p; buf = g (first step) else momentum*buf + (1-dampening)*g;
    g = g + momentum*buf (nesterov) else buf; p -= lr*g``."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        self.momentum = _check_hyper("momentum", momentum)
        self.dampening = float(dampening)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening == 0 (as in torch)")
        self.nesterov = bool(nesterov)
        self.momentum_buffer: dict[str, np.ndarray] = {}

    def _update(self, name, p, g):
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        if self.momentum != 0:
            buf = self.momentum_buffer.get(name)
            if buf is None:
                buf = self.momentum_buffer[name] = g.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    """torch.optim.Adam (and AdamW with ``decoupled=True``), the single-tensor path torch takes on
    CPU: ``m.lerp_(g, 1-b1); v = b2*v + (1-b2)*g*g; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.
    """

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False):
        super().__init__(params, lr)
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        self.beta1 = _check_hyper("betas[0]", betas[0], 0.0, 1.0, high_open=True)
        self.beta2 = _check_hyper("betas[1]", betas[1], 0.0, 1.0, high_open=True)
        self.eps = _check_hyper("eps", eps)
        self.weight_decay = _check_hyper("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)
        self.exp_avg = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: np.zeros_like(p) for n, p in self.params.items()}
        self.max_exp_avg_sq = ({n: np.zeros_like(p) for n, p in self.params.items()}
                               if self.amsgrad else {})

    def _update(self, name, p, g):
        t = self.step_count
        if self.weight_decay != 0:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m, v = self.exp_avg[name], self.exp_avg_sq[name]
        # torch's lerp with weight < 0.5 is start + weight * (end - start).
        m += (1 - self.beta1) * (g - m)
        v *= self.beta2
        v += (1 - self.beta2) * (g * g)
        step_size = self.lr / (1 - self.beta1 ** t)
        bias_correction2_sqrt = (1 - self.beta2 ** t) ** 0.5
        if self.amsgrad:
            vmax = self.max_exp_avg_sq[name]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        denom = np.sqrt(v) / bias_correction2_sqrt
        denom += self.eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2, as torch)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


def clip_grad_norm_(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Scale every gradient in place so their global L2 norm is at most ``max_norm``; returns the
    norm before clipping (as torch.nn.utils.clip_grad_norm_, including its 1e-6 in the divisor).

    A non-finite norm is returned as is and nothing is scaled: the caller decides (training stops
    and names the step rather than spreading NaN into every weight)."""
    max_norm = _check_hyper("max_norm", max_norm)
    if not grads:
        raise ValueError("grads is empty")
    # Per-tensor norms first, then the norm of the norms: torch's order of summation.
    norms = [np.linalg.norm(np.asarray(g).ravel()) for g in grads.values()]
    total = float(np.linalg.norm(np.asarray(norms, dtype=np.float64)))
    if not math.isfinite(total):
        return total
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total


def warmup_inverse_sqrt(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Learning rate at optimizer step ``step`` (1-based): rises linearly to ``peak_lr`` at
    ``warmup_steps``, then decays as ``peak_lr * sqrt(warmup_steps / step)``.

    This is "Attention Is All You Need" eq. 3, ``d_model^-0.5 * min(step^-0.5, step *
    warmup^-1.5)``, rescaled so its maximum is ``peak_lr`` (see ``noam_lr``)."""
    if step < 1:
        raise ValueError(f"step is 1-based, got {step}")
    if warmup_steps < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
    return peak_lr * min(step / warmup_steps, math.sqrt(warmup_steps / step))


def noam_lr(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """The paper's schedule verbatim: ``factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``."""
    if step < 1:
        raise ValueError(f"step is 1-based, got {step}")
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)
