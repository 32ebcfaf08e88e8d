"""What travels with a model version besides its parameters, and the device statistics it is
made from (pure; no I/O).

- **Feature standardisation**: devices report the count, mean and sum of squared deviations
  of their local features (``FeatureStats``, in their status while the published model asks
  for them); the orchestrator pools them (:func:`pool_stats`) into one mean and scale for the
  whole federation, fixed in a version's ``ModelAnnex`` and inherited by every later one, so
  devices whose sensors report in different units agree on the model's input.
- **Anomaly threshold**: devices evaluating an unsupervised model report a histogram of their
  held-out reconstruction scores over the fixed bins :data:`SCORE_EDGES`, with Gaussian noise
  added on the device (differential privacy: one sample moves one count by one); the
  orchestrator sums them and takes a quantile (:func:`histogram_quantile`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ValidationError
from .limits import DEFAULT_LIMITS

__all__ = [
    "MAX_FEATURES",
    "SCORE_BINS",
    "SCORE_EDGES",
    "FeatureStats",
    "ModelAnnex",
    "annex_from_record",
    "annex_to_record",
    "histogram_quantile",
    "pool_stats",
    "score_histogram",
    "standardize",
]

MAX_FEATURES = 65_536
"""The most features a standardisation (or its statistics) may describe."""

_DECADES = (-3, 3)
_PER_DECADE = 8
SCORE_EDGES: tuple[float, ...] = tuple(
    float(10.0 ** (e / _PER_DECADE))
    for e in range(_DECADES[0] * _PER_DECADE, _DECADES[1] * _PER_DECADE + 1))
"""Bin edges of a score histogram: 8 per decade from 1e-3 to 1e3 (a standardised model's
reconstruction errors; a threshold resolution of 33 % in score, refined by interpolation).
Counts have one more bin at each end (below the first edge, above the last), so a histogram
has ``len(SCORE_EDGES) + 1`` counts. Few bins on purpose: every bin carries its own noise,
and the noise of the bins above a threshold adds up in its estimate."""
SCORE_BINS = len(SCORE_EDGES) + 1


def _finite(values: Sequence[float], what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite")


@dataclass(frozen=True, slots=True)
class FeatureStats:
    """One device's local feature statistics: ``count`` samples, their per-feature ``mean``
    and ``m2`` (sum of squared deviations from that mean)."""

    count: int
    mean: list[float]
    m2: list[float]

    def __post_init__(self) -> None:
        if self.count <= 0:
            raise ValueError("count must be positive")
        if not 0 < len(self.mean) <= MAX_FEATURES or len(self.m2) != len(self.mean):
            raise ValueError(f"mean and m2 must have the same length, 1..{MAX_FEATURES}")
        _finite(self.mean, "mean")
        _finite(self.m2, "m2")
        if any(v < 0 for v in self.m2):
            raise ValueError("m2 must be >= 0")

    @classmethod
    def of(cls, X: np.ndarray) -> FeatureStats:
        x = np.asarray(X, dtype=np.float64)
        mean = x.mean(axis=0)
        return cls(len(x), mean.tolist(), ((x - mean) ** 2).sum(axis=0).tolist())

    @property
    def n_features(self) -> int:
        return len(self.mean)


def pool_stats(parts: Sequence[FeatureStats], *, min_std: float = 1e-6
               ) -> tuple[list[float], list[float]]:
    """The federation-wide ``(mean, scale)`` of devices' statistics (Chan et al.'s parallel
    combination), ``scale = 1 / max(std, min_std)``. Raises ``ValueError`` when the parts do
    not describe the same number of features."""
    if not parts:
        raise ValueError("no statistics to pool")
    if len({p.n_features for p in parts}) != 1:
        raise ValueError("the devices' statistics describe different numbers of features")
    counts = np.array([p.count for p in parts], dtype=np.float64)
    means = np.array([p.mean for p in parts], dtype=np.float64)
    m2s = np.array([p.m2 for p in parts], dtype=np.float64)
    total = counts.sum()
    mean = (counts[:, None] * means).sum(axis=0) / total
    m2 = m2s.sum(axis=0) + (counts[:, None] * (means - mean) ** 2).sum(axis=0)
    std = np.sqrt(m2 / total)
    return mean.tolist(), (1.0 / np.maximum(std, min_std)).tolist()


@dataclass(frozen=True, slots=True)
class ModelAnnex:
    """Published with a version: its input standardisation (empty: none) and the anomaly
    threshold agreed for it (None: not yet); ``wants_stats`` asks devices for their
    ``FeatureStats`` (the federation standardises and has no standardisation yet)."""

    feature_mean: list[float] = field(default_factory=list)
    feature_scale: list[float] = field(default_factory=list)
    anomaly_threshold: float | None = None
    threshold_version: int | None = None
    """The version whose scores gave ``anomaly_threshold`` (this one, or an earlier one)."""
    wants_stats: bool = False

    def __post_init__(self) -> None:
        if len(self.feature_mean) != len(self.feature_scale) or \
                len(self.feature_mean) > MAX_FEATURES:
            raise ValueError("feature_mean and feature_scale must have the same length")
        _finite(self.feature_mean, "feature_mean")
        _finite(self.feature_scale, "feature_scale")
        if any(s <= 0 for s in self.feature_scale):
            raise ValueError("feature_scale must be > 0")
        t = self.anomaly_threshold
        if t is not None and not (math.isfinite(t) and t >= 0):
            raise ValueError("anomaly_threshold must be finite and >= 0")

    @property
    def standardized(self) -> bool:
        return bool(self.feature_mean)


def annex_to_record(annex: ModelAnnex) -> dict[str, Any]:
    """The annex as plain values (msgpack or JSON)."""
    from ._convert import to_wire

    record: dict[str, Any] = to_wire(annex)
    return record


def annex_from_record(record: Any) -> ModelAnnex:
    """The annex of :func:`annex_to_record`; ``ValidationError`` if it is not one."""
    from ._convert import from_wire

    if not isinstance(record, dict):
        raise ValidationError("a model annex must be a map")
    annex: ModelAnnex = from_wire(ModelAnnex, record, DEFAULT_LIMITS)
    return annex


def standardize(X: np.ndarray, annex: ModelAnnex) -> np.ndarray:
    """``(X - mean) * scale`` as float32 (X itself when the annex has no standardisation).
    Raises ``ValueError`` when X has another number of features."""
    if not annex.standardized:
        return X
    if X.ndim != 2 or X.shape[1] != len(annex.feature_mean):
        raise ValueError(f"the data has {X.shape[-1]} features, the model's standardisation "
                         f"{len(annex.feature_mean)}")
    mean = np.asarray(annex.feature_mean, dtype=np.float32)
    scale = np.asarray(annex.feature_scale, dtype=np.float32)
    return ((np.asarray(X, dtype=np.float32) - mean) * scale).astype(np.float32, copy=False)


def score_histogram(scores: np.ndarray) -> np.ndarray:
    """Counts (float64, :data:`SCORE_BINS` of them) of ``scores`` over :data:`SCORE_EDGES`;
    a non-finite score counts in the top bin."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = np.where(np.isfinite(s), s, np.inf)
    index = np.searchsorted(np.asarray(SCORE_EDGES), s, side="right")
    return np.bincount(index, minlength=SCORE_BINS).astype(np.float64)


def histogram_quantile(counts: Sequence[float], q: float,
                       total: float | None = None) -> tuple[float, float]:
    """``(score, total)``: the ``q``-quantile of a summed, noisy histogram over
    :data:`SCORE_EDGES` and the sample count it is based on.

    The noise has mean zero, so the estimate works on the raw counts: walking down from the
    top, the threshold is where the counts above it first exceed ``(1 - q) * total``
    (interpolated geometrically within that bin). ``total`` is the true sample count when
    known (devices report it exactly); otherwise the sum of the counts. Clipping each count
    at zero first would bias every empty bin upwards and push the threshold up."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (SCORE_BINS,):
        raise ValueError(f"a score histogram has {SCORE_BINS} counts, not {c.shape}")
    n = float(c.sum()) if total is None else float(total)
    if not n > 0:
        raise ValueError("the histogram is empty")
    tail = (1.0 - q) * n
    above = 0.0  # counts above the upper edge of bin i
    for i in range(SCORE_BINS - 1, 0, -1):
        if above + c[i] > tail:
            if i == SCORE_BINS - 1:
                return SCORE_EDGES[-1], n
            lo, hi = SCORE_EDGES[i - 1], SCORE_EDGES[i]
            frac = min(max((above + c[i] - tail) / c[i], 0.0), 1.0)
            return float(lo * (hi / lo) ** frac), n
        above += c[i]
    return SCORE_EDGES[0], n
