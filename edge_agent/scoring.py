"""The model's view of local data, and anomaly scoring on the device.

- ``model_input``: the data as the model takes it, standardised with the federation's
  statistics when the model's annex carries them (``schemas.annex``).
- ``noisy_score_histogram``: an unsupervised model's held-out scores as a histogram with
  Gaussian noise on every count, drawn from libsodium's CSPRNG (the noise is what makes the
  report differentially private, so it must be unpredictable and is never seeded).
- ``flag_anomalies``: which samples score above the annex's threshold (the one rule the
  device and ``fedmq demo`` both apply).
- ``AnomalyMonitor``: flags each batch of incoming samples (a data file arriving in a
  watched directory) with the model held now, counting them for the device's status.
"""

from __future__ import annotations

import logging
import math

import nacl.utils
import numpy as np

from schemas.annex import ModelAnnex, score_histogram, standardize

from .data import LocalData
from .errors import DataError
from .keeper import ModelKeeper
from .shared import AgentStats, Offload
from .trainer import OrtModel

__all__ = ["AnomalyMonitor", "flag_anomalies", "model_input", "noisy_score_histogram",
           "secure_normal"]


def model_input(data: LocalData, annex: ModelAnnex) -> LocalData:
    """``data`` standardised as the model's annex says; ``DataError`` if it cannot be."""
    if not annex.standardized or len(data) == 0:
        return data
    try:
        return LocalData(standardize(data.X, annex), data.y)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def secure_normal(n: int, std: float) -> np.ndarray:
    """``n`` draws of N(0, std²) from the OS CSPRNG (libsodium), by Box-Muller."""
    if n <= 0 or std == 0:
        return np.zeros(max(n, 0))
    pairs = (n + 1) // 2
    raw = np.frombuffer(nacl.utils.random(16 * pairs), dtype="<u8").reshape(pairs, 2)
    # 53 random bits each, shifted into (0, 1): log(u1) is finite
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    r = np.sqrt(-2.0 * np.log(u[:, 0]))
    z = np.concatenate([r * np.cos(2 * math.pi * u[:, 1]), r * np.sin(2 * math.pi * u[:, 1])])
    return z[:n] * std


def noisy_score_histogram(ort: OrtModel, params: dict[str, np.ndarray], X: np.ndarray,
                          noise_std: float) -> list[float]:
    """The histogram of ``X``'s scores under ``params`` plus noise (empty when the model
    gives no score). Synchronous: run it in a worker thread."""
    if not ort.scores or len(X) == 0:
        return []
    counts = score_histogram(ort.predict(params, X)["score"])
    noisy: list[float] = (counts + secure_normal(len(counts), noise_std)).tolist()
    return noisy


def flag_anomalies(ort: OrtModel, params: dict[str, np.ndarray], annex: ModelAnnex,
                   X: np.ndarray) -> np.ndarray | None:
    """Which samples of raw ``X`` score above the annex's threshold under ``params`` (a NaN
    score counts as one); None when there is nothing to score with (no score output, no
    threshold). ``DataError`` if X does not fit the standardisation. Synchronous."""
    threshold = annex.anomaly_threshold
    if threshold is None or not ort.scores:
        return None
    scores = ort.predict(params, model_input(LocalData(X, None), annex).X)["score"]
    flagged: np.ndarray = ~(scores <= threshold)
    return flagged


class AnomalyMonitor:
    """Counts incoming samples whose score, under the held model, is above its threshold."""

    def __init__(self, models: ModelKeeper, *, stats: AgentStats, offload: Offload,
                 logger: logging.Logger) -> None:
        self._models = models
        self._stats = stats
        self._offload = offload
        self._log = logger

    async def observe(self, data: LocalData) -> int | None:
        """Score ``data``; returns how many are anomalies (None: nothing to score with)."""
        loaded = self._models.current
        if loaded is None or len(data) == 0:
            return None
        stored = loaded.stored
        try:
            flags = await self._offload.run(flag_anomalies, loaded.ort, stored.params,
                                            stored.annex, data.X)
        except DataError as exc:
            self._log.warning("anomaly scoring skipped: %s", exc)
            return None
        if flags is None:
            return None
        flagged = int(np.count_nonzero(flags))
        self._stats.scored += len(data)
        self._stats.anomalies += flagged
        if flagged:
            self._log.warning("anomaly: %d of %d new samples score above %.4g (model v%d)",
                              flagged, len(data), stored.annex.anomaly_threshold,
                              stored.version)
        return flagged
