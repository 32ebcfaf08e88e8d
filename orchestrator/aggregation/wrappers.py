"""Strategies that hold a strategy: each adds one thing around the inner ``aggregate``.

    ServerStep(Clipped(RobustReduction(FedBuff(...), "median"), 1.0), optimizer)

clips every update to norm 1, lets FedBuff decide which count (staleness, shapes), replaces
their weighted mean with the coordinate-wise median, and applies the server optimizer to the
result. Server-side DP noise is one more such wrapper
(:class:`orchestrator.privacy.server_noise.ServerNoise`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ._combine import in_model_order
from .reducers import clip_by_norm, coordinate_median, global_norm, trimmed_mean
from .strategy import (
    AggregateResult,
    BufferedUpdate,
    ReducerName,
    ServerOptimizer,
    Strategy,
    UpdateLike,
)

__all__ = ["Clipped", "RobustReduction", "ServerStep", "with_delta"]


def with_delta(update: UpdateLike, delta: Mapping[str, np.ndarray],
               num_samples: int | None = None) -> BufferedUpdate:
    """``update`` carrying another delta (and, given, another sample count)."""
    return BufferedUpdate(update.update_id, update.sender, update.base_version,
                          update.num_samples if num_samples is None else num_samples,
                          dict(delta))


@dataclass(eq=False)
class Clipped:
    """Clips every update's delta to ``clip_norm`` (global L2) before the inner strategy
    sees it; the result records each update's norm before clipping and its scale. A
    non-finite delta goes in as it is, for the inner strategy to drop (no scale fixes it)."""

    inner: Strategy
    clip_norm: float

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm!r}")

    def aggregate(self, global_params: Mapping[str, np.ndarray], version: int,
                  updates: Sequence[UpdateLike]) -> AggregateResult:
        norms: dict[int, float] = {}
        scales: dict[int, float] = {}
        clipped: list[UpdateLike] = []
        for u in updates:
            norm = global_norm(u.delta)
            if not math.isfinite(norm):
                clipped.append(u)
                continue
            delta, scale = clip_by_norm(u.delta, self.clip_norm)
            norms.setdefault(u.update_id, norm)
            scales.setdefault(u.update_id, scale)
            clipped.append(with_delta(u, delta))
        result = self.inner.aggregate(global_params, version, clipped)
        used = result.used_ids
        return dataclasses.replace(result, update_norms={i: norms[i] for i in used},
                                   clip_scales={i: scales[i] for i in used})


@dataclass(eq=False)
class RobustReduction:
    """The coordinate-wise median or trimmed mean of the updates the inner strategy used, in
    place of their weighted mean. The weights are ignored on purpose (see :mod:`.reducers`)."""

    inner: Strategy
    reducer: ReducerName
    trim_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.reducer not in ("median", "trimmed_mean"):
            raise ValueError(f"unknown robust reducer {self.reducer!r} "
                             "(choose from ['median', 'trimmed_mean'])")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction!r}")

    def aggregate(self, global_params: Mapping[str, np.ndarray], version: int,
                  updates: Sequence[UpdateLike]) -> AggregateResult:
        result = self.inner.aggregate(global_params, version, updates)
        if result.delta is None:
            return result
        first: dict[int, UpdateLike] = {}
        for u in updates:
            first.setdefault(u.update_id, u)
        deltas = [first[i].delta for i in result.used_ids]
        reduced = (coordinate_median(deltas) if self.reducer == "median"
                   else trimmed_mean(deltas, self.trim_fraction))
        delta = in_model_order(global_params, reduced)
        return dataclasses.replace(result, delta=delta, delta_norm=global_norm(delta))


@dataclass(eq=False)
class ServerStep:
    """Applies the server optimizer to the inner strategy's aggregate: the outermost wrapper,
    so its moments only ever see the final (clipped, noised) delta. Advances the optimizer
    once per aggregate that has a delta."""

    inner: Strategy
    optimizer: ServerOptimizer

    def aggregate(self, global_params: Mapping[str, np.ndarray], version: int,
                  updates: Sequence[UpdateLike]) -> AggregateResult:
        result = self.inner.aggregate(global_params, version, updates)
        if result.delta is None:
            return result
        return dataclasses.replace(result, params=self.optimizer.step(global_params,
                                                                      result.delta))
