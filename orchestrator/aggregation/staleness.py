"""Staleness weighting for asynchronous aggregation.

An update trained on version ``tau`` while the server is at ``t`` has staleness ``s = t - tau``
and is weighted by ``s(s)`` (Xie et al., "Asynchronous Federated Optimization", used by
FedBuff, Nguyen et al. 2022). Defaults are the papers': polynomial ``a = 0.5``; hinge ``a = 10,
b = 4``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .strategy import StalenessFn

__all__ = ["Constant", "Hinge", "Polynomial", "staleness_from_config"]


def _check_staleness(staleness: int) -> None:
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")


def _check_param(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class Constant:
    """Every update counts fully, however stale."""

    def __call__(self, staleness: int) -> float:
        _check_staleness(staleness)
        return 1.0


@dataclass(frozen=True)
class Polynomial:
    """``(1 + s) ** -a``: smooth decay; ``a = 0`` is constant."""

    a: float = 0.5

    def __post_init__(self) -> None:
        _check_param("a", self.a)

    def __call__(self, staleness: int) -> float:
        _check_staleness(staleness)
        return float((1.0 + staleness) ** -self.a)


@dataclass(frozen=True)
class Hinge:
    """1 up to ``b`` versions behind, then ``1 / (a (s - b) + 1)``."""

    a: float = 10.0
    b: int = 4

    def __post_init__(self) -> None:
        _check_param("a", self.a)
        _check_param("b", self.b)

    def __call__(self, staleness: int) -> float:
        _check_staleness(staleness)
        if staleness <= self.b:
            return 1.0
        return 1.0 / (self.a * (staleness - self.b) + 1.0)


_BY_NAME: dict[str, type[Constant] | type[Polynomial] | type[Hinge]] = {
    "constant": Constant,
    "polynomial": Polynomial,
    "hinge": Hinge,
}


def staleness_from_config(name: str, **kwargs: Any) -> StalenessFn:
    """Build a staleness function from configuration, e.g. ``("hinge", a=10, b=4)``."""
    cls = _BY_NAME.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown staleness function {name!r} (choose from {sorted(_BY_NAME)})")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad parameters for staleness function {name!r}: {exc}") from None
