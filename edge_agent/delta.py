"""Pure numpy maths on model deltas: difference, global-norm clipping, Gaussian noise."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from schemas import Params

from .errors import ConfigError


def model_delta(local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> Params:
    """``local − base`` per tensor, float32, in ``base``'s order."""
    return {
        name: (np.asarray(local[name], np.float32) - np.asarray(value, np.float32))
        for name, value in base.items()
    }


def global_norm(delta: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken together (accumulated in float64)."""
    return math.sqrt(sum(float(np.dot(v.ravel().astype(np.float64), v.ravel()))
                         for v in delta.values()))


def clip_global_norm(delta: Mapping[str, np.ndarray], clip_norm: float) -> tuple[Params, float]:
    """Scale the whole delta down to ``clip_norm`` when its global norm exceeds it.

    Returns the clipped delta and the norm before clipping.
    """
    if clip_norm <= 0:
        raise ConfigError("clip_norm must be positive")
    norm = global_norm(delta)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {n: (v * np.float32(scale)).astype(np.float32) for n, v in delta.items()}, norm


def add_gaussian_noise(
    delta: Mapping[str, np.ndarray], std: float, rng: np.random.Generator
) -> Params:
    """Add i.i.d. N(0, std²) to every element (the local Gaussian mechanism)."""
    if std < 0:
        raise ConfigError("std must be >= 0")
    return {
        n: (v + rng.normal(0.0, std, size=v.shape)).astype(np.float32) for n, v in delta.items()
    }
