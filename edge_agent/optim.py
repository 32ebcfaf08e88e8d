"""On-device optimizers beyond plain SGD, for every model alike (see DESIGN.md, "Models").

A ``train_step`` graph applies one SGD step, ``p - lr * (grad + mu * (p - p_global))``, and is
linear in ``lr``; run with ``lr = 1`` and ``mu = 0`` it yields ``p - grad``, so the raw gradient
is ``p - p_new`` for any graph that honours the contract, built-in or imported. The optimizer
then works on that gradient here, in numpy, in place on the float32 buffers:

1. weight decay: for ``sgd`` and ``momentum`` it is L2, ``g += weight_decay * p``; for ``adam``
   it is decoupled (AdamW), ``p *= 1 - lr * weight_decay``, applied before the step;
2. FedProx: ``g += mu * (p - p_global)``;
3. the step: ``sgd`` ``p -= lr * g``; ``momentum`` ``v = momentum * v + g; p -= lr * v``;
   ``adam`` bias-corrected ``m`` and ``v`` with ``beta1``, ``beta2`` and ``eps``.

The state (``v``, ``m``, the step count) lives for one task's local training and starts at
zero for each task. Plain ``sgd`` without weight decay needs none of this: the trainer runs the
graph with the real ``lr`` and ``mu`` then (:attr:`OptimizerSpec.in_graph`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = ["OPTIMIZERS", "LocalOptimizer", "OptimizerSpec"]

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    """Which optimizer a task asks for, and its hyperparameters (``lr`` and ``mu`` aside)."""

    name: str = "sgd"
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.name!r}")
        for what in ("momentum", "beta1", "beta2"):
            value = getattr(self, what)
            if not (isinstance(value, int | float) and 0 <= value < 1):
                raise ConfigError(f"{what} must be in [0, 1), got {value!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0, "
                              f"got {self.weight_decay!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a finite number > 0, got {self.eps!r}")

    @property
    def in_graph(self) -> bool:
        """The graph's own step is this optimizer: plain SGD, no weight decay."""
        return self.name == "sgd" and self.weight_decay == 0


class LocalOptimizer:
    """One task's optimizer over named float32 parameters, updated in place.

    Its buffers (state and one scratch array per parameter) are allocated once; a step
    allocates nothing.
    """

    def __init__(self, spec: OptimizerSpec, lr: float, mu: float,
                 anchor: Mapping[str, np.ndarray]) -> None:
        self._spec = spec
        self._lr = float(lr)
        self._mu = float(mu)
        self._anchor = anchor
        self._scratch = {n: np.zeros_like(a, dtype=np.float32) for n, a in anchor.items()}
        # first moment (adam) or velocity (momentum); second moment (adam)
        self._m = ({n: np.zeros_like(a) for n, a in self._scratch.items()}
                   if spec.name != "sgd" else {})
        self._v = ({n: np.zeros_like(a) for n, a in self._scratch.items()}
                   if spec.name == "adam" else {})
        self._t = 0

    @property
    def steps(self) -> int:
        return self._t

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """One step: ``params`` are updated in place; ``grads`` are used up (overwritten)."""
        self._t += 1
        for name, p in params.items():
            g = grads[name]
            self._gradient(name, p, g)
            if self._spec.name == "sgd":
                g *= self._lr
                p -= g
            elif self._spec.name == "momentum":
                v = self._m[name]
                v *= self._spec.momentum
                v += g
                np.multiply(v, self._lr, out=g)
                p -= g
            else:
                self._adam(name, p, g)

    def _gradient(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        """L2 weight decay (not for adam) and the FedProx term, added to ``g``."""
        tmp = self._scratch[name]
        wd = self._spec.weight_decay
        if wd and self._spec.name != "adam":
            np.multiply(p, wd, out=tmp)
            g += tmp
        if self._mu:
            np.subtract(p, self._anchor[name], out=tmp)
            tmp *= self._mu
            g += tmp

    def _adam(self, name: str, p: np.ndarray, g: np.ndarray) -> None:
        s, tmp, m, v = self._spec, self._scratch[name], self._m[name], self._v[name]
        if s.weight_decay:
            p *= 1 - self._lr * s.weight_decay  # decoupled (AdamW)
        m *= s.beta1
        np.multiply(g, 1 - s.beta1, out=tmp)
        m += tmp
        v *= s.beta2
        np.square(g, out=tmp)
        tmp *= 1 - s.beta2
        v += tmp
        # p -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
        np.divide(v, 1 - s.beta2 ** self._t, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += s.eps
        np.divide(m, tmp, out=tmp)
        tmp *= self._lr / (1 - s.beta1 ** self._t)
        p -= tmp
