"""Scoring on the device: the model's view of the data, the DP noise source, the noisy score
histogram of an evaluation and the monitor that counts anomalies in arriving data."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest

from edge_agent.data import LocalData
from edge_agent.errors import DataError
from edge_agent.keeper import LoadedModel
from edge_agent.records import StoredModel
from edge_agent.scoring import AnomalyMonitor, model_input, noisy_score_histogram, secure_normal
from edge_agent.shared import AgentStats, Offload
from edge_agent.trainer import OrtModel
from orchestrator.models.builder import build_model
from orchestrator.models.spec import ModelSpec
from schemas.annex import SCORE_BINS, ModelAnnex, score_histogram

SPEC = ModelSpec(kind="autoencoder", n_features=4, n_classes=0, hidden=(2,))


@pytest.fixture(scope="module")
def model() -> tuple[OrtModel, dict[str, np.ndarray]]:
    built = build_model(SPEC)
    return OrtModel(built.graphs), dict(built.params)


def test_secure_normal_has_the_asked_moments_and_is_never_repeated() -> None:
    z = secure_normal(200_001, 3.0)
    assert z.shape == (200_001,)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 3.0) < 0.05
    assert not np.array_equal(secure_normal(8, 1.0), secure_normal(8, 1.0))
    assert not secure_normal(5, 0.0).any() and secure_normal(0, 1.0).shape == (0,)


def test_model_input_standardises_and_names_a_width_mismatch() -> None:
    data = LocalData(np.array([[2.0, 4.0]], np.float32), None)
    assert model_input(data, ModelAnnex()) is data
    assert model_input(data, ModelAnnex([1.0, 2.0], [1.0, 0.5])).X.tolist() == [[1.0, 1.0]]
    with pytest.raises(DataError, match="3"):
        model_input(data, ModelAnnex([0.0] * 3, [1.0] * 3))


def test_the_histogram_counts_the_scores_with_noise_added(
        model: tuple[OrtModel, dict[str, np.ndarray]]) -> None:
    ort, params = model
    X = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    exact = score_histogram(ort.predict(params, X)["score"])
    assert noisy_score_histogram(ort, params, X, 0.0) == exact.tolist()
    noisy = np.asarray(noisy_score_histogram(ort, params, X, 2.0))
    assert noisy.shape == (SCORE_BINS,) and not np.array_equal(noisy, exact)
    assert abs(noisy.sum() - 300) < 6 * 2.0 * np.sqrt(SCORE_BINS)


@dataclass
class _Held:
    current: LoadedModel | None


async def test_the_monitor_counts_what_scores_above_the_threshold(
        model: tuple[OrtModel, dict[str, np.ndarray]]) -> None:
    ort, params = model
    stats = AgentStats()
    held = _Held(None)
    monitor = AnomalyMonitor(held, stats=stats, offload=Offload(),  # type: ignore[arg-type]
                             logger=logging.getLogger("test"))
    X = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    X[:5] *= 100.0  # far off: large reconstruction errors
    data = LocalData(X, None)
    assert await monitor.observe(data) is None  # no model yet
    stored = StoredModel(1, params, {}, annex=ModelAnnex())
    held.current = LoadedModel(stored, ort)
    assert await monitor.observe(data) is None  # no threshold agreed yet
    scores = ort.predict(params, X)["score"]
    threshold = float(np.sort(scores)[-6])  # the five largest are above it
    held.current = LoadedModel(StoredModel(1, params, {}, annex=ModelAnnex(
        anomaly_threshold=threshold)), ort)
    assert await monitor.observe(data) == 5
    assert (stats.scored, stats.anomalies) == (50, 5)
    # a standardisation that does not fit the data: skipped, nothing counted
    held.current = LoadedModel(StoredModel(1, params, {}, annex=ModelAnnex(
        [0.0] * 3, [1.0] * 3, anomaly_threshold=threshold)), ort)
    assert await monitor.observe(data) is None and stats.scored == 50
