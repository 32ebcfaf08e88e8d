"""Server optimizers: apply the aggregated delta (``local - base``) to the global parameters.

The pseudo-gradient is ``-delta``, so every optimizer moves the parameters *along* ``delta``.
``ServerSGD(lr=1)`` is plain FedAvg. The adaptive ones follow Reddi et al., "Adaptive Federated
Optimization" (ICLR 2021), Algorithm 2, exactly: ``m_{-1} = 0``, ``v_{-1} = tau^2``, no bias
correction, ``x += lr * m / (sqrt(v) + tau)`` with

- FedAdagrad: ``v = v + d^2``
- FedAdam:    ``v = b2 v + (1 - b2) d^2``
- FedYogi:    ``v = v - (1 - b2) d^2 sign(v - d^2)``

and ``m = b1 m + (1 - b1) d`` for all three. Moments are float32 like the parameters.

``step`` advances the optimizer. If the transaction that persists the resulting version fails,
reload the optimizer from the stored state (``load_state_dict``) before trying again.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import msgpack
import numpy as np

from orchestrator.errors import OrchestratorError

from .codec import ParamsCodecError, decode_params, encode_params
from .strategy import Params, ServerOptimizer

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
    "OptimizerStateError",
    "ServerSGD",
    "optimizer_from_config",
]


class OptimizerStateError(OrchestratorError, ValueError):
    """A saved optimizer state is unreadable or belongs to another optimizer or model."""


def _check_fits(params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> None:
    if params.keys() != delta.keys():
        raise ValueError(f"delta tensors {list(delta)} do not match params {list(params)}")
    for name, p in params.items():
        if p.shape != delta[name].shape:
            raise ValueError(f"delta {name!r} has shape {delta[name].shape}, params {p.shape}")


def _check_rate(name: str, value: float, *, upper: float | None = None) -> None:
    ok = math.isfinite(value) and value >= 0 and (upper is None or value < upper)
    if not ok:
        bound = f" and < {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be finite, >= 0{bound}; got {value!r}")


def _pack_state(kind: str, step: int, moments: Mapping[str, Params]) -> bytes:
    packed: dict[str, Any] = {"kind": kind, "step": step}
    packed.update({key: encode_params(value) for key, value in moments.items()})
    return bytes(msgpack.packb(packed, use_bin_type=True))


def _unpack_state(kind: str, state: bytes, keys: tuple[str, ...]) -> tuple[int, dict[str, Params]]:
    try:
        raw = msgpack.unpackb(state, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise OptimizerStateError(f"unreadable optimizer state: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != kind:
        found = raw.get("kind") if isinstance(raw, dict) else None
        raise OptimizerStateError(f"state is for optimizer {found!r}, not {kind!r}")
    step = raw.get("step")
    if not isinstance(step, int) or step < 0:
        raise OptimizerStateError("state has no valid step count")
    moments: dict[str, Params] = {}
    for key in keys:
        blob = raw.get(key)
        if not isinstance(blob, bytes):
            raise OptimizerStateError(f"state lacks {key!r}")
        try:
            moments[key] = decode_params(blob)
        except ParamsCodecError as exc:
            raise OptimizerStateError(f"state {key!r}: {exc}") from None
    return step, moments


class ServerSGD:
    """``x += lr * u`` with ``u = momentum * u + delta`` (heavy-ball; momentum 0 = plain)."""

    _KIND: ClassVar[str] = "ServerSGD"

    def __init__(self, lr: float = 1.0, momentum: float = 0.0) -> None:
        _check_rate("lr", lr)
        _check_rate("momentum", momentum, upper=1.0)
        self.lr = lr
        self.momentum = momentum
        self._velocity: Params = {}
        self._steps = 0

    def __repr__(self) -> str:
        return f"ServerSGD(lr={self.lr}, momentum={self.momentum})"

    @property
    def steps(self) -> int:
        return self._steps

    def step(self, params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Params:
        _check_fits(params, delta)
        out: Params = {}
        velocity: Params = {}
        for name, p in params.items():
            d = np.asarray(delta[name], dtype=p.dtype)
            if self.momentum:
                prev = self._velocity.get(name)
                u = d.copy() if prev is None else prev * p.dtype.type(self.momentum) + d
                velocity[name] = u
            else:
                u = d
            out[name] = p + p.dtype.type(self.lr) * u
        self._velocity = velocity
        self._steps += 1
        return out

    def state_dict(self) -> bytes:
        return _pack_state(self._KIND, self._steps, {"velocity": self._velocity})

    def load_state_dict(self, state: bytes) -> None:
        self._steps, moments = _unpack_state(self._KIND, state, ("velocity",))
        self._velocity = moments["velocity"]


class _Adaptive(ABC):
    """Shared body of FedAdagrad / FedAdam / FedYogi; subclasses define ``_second_moment``."""

    _KIND: ClassVar[str]

    def __init__(
        self, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        _check_rate("lr", lr)
        _check_rate("beta1", beta1, upper=1.0)
        _check_rate("beta2", beta2, upper=1.0)
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be finite and > 0; got {tau!r}")
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self._m: Params = {}
        self._v: Params = {}
        self._steps = 0

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr}, beta1={self.beta1}, "
                f"beta2={self.beta2}, tau={self.tau})")

    @property
    def steps(self) -> int:
        return self._steps

    @abstractmethod
    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        """The new second moment from the previous one and the squared delta."""

    def step(self, params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Params:
        _check_fits(params, delta)
        if self._m and self._m.keys() != params.keys():
            raise ValueError("params no longer match the optimizer's moments; reset it")
        out: Params = {}
        new_m: Params = {}
        new_v: Params = {}
        for name, p in params.items():
            f = p.dtype.type
            d = np.asarray(delta[name], dtype=p.dtype)
            m = self._m.get(name)
            v = self._v.get(name)
            if m is None or v is None:
                m = np.zeros_like(p)
                v = np.full_like(p, f(self.tau) ** 2)
            m = f(self.beta1) * m + f(1.0 - self.beta1) * d
            v = self._second_moment(v, d * d)
            new_m[name], new_v[name] = m, v
            out[name] = p + f(self.lr) * m / (np.sqrt(v) + f(self.tau))
        self._m, self._v = new_m, new_v
        self._steps += 1
        return out

    def state_dict(self) -> bytes:
        return _pack_state(self._KIND, self._steps, {"m": self._m, "v": self._v})

    def load_state_dict(self, state: bytes) -> None:
        steps, moments = _unpack_state(self._KIND, state, ("m", "v"))
        if moments["m"].keys() != moments["v"].keys():
            raise OptimizerStateError("first and second moments name different tensors")
        self._steps, self._m, self._v = steps, moments["m"], moments["v"]


class FedAdagrad(_Adaptive):
    _KIND = "FedAdagrad"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        out: np.ndarray = v + d2
        return out


class FedAdam(_Adaptive):
    _KIND = "FedAdam"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        f = v.dtype.type
        out: np.ndarray = f(self.beta2) * v + f(1.0 - self.beta2) * d2
        return out


class FedYogi(_Adaptive):
    _KIND = "FedYogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        f = v.dtype.type
        out: np.ndarray = v - f(1.0 - self.beta2) * d2 * np.sign(v - d2)
        return out


_BY_NAME: dict[str, type[ServerSGD] | type[_Adaptive]] = {
    "sgd": ServerSGD,
    "fedavg": ServerSGD,
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
}


def optimizer_from_config(name: str, **kwargs: Any) -> ServerOptimizer:
    """Build a server optimizer from configuration, e.g. ``("fedadam", lr=0.01)``."""
    cls = _BY_NAME.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown server optimizer {name!r} (choose from {sorted(_BY_NAME)})")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad parameters for optimizer {name!r}: {exc}") from None
