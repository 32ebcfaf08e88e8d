"""Drift signals (pure): each update's norm and cosine to the aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.aggregation import BufferedUpdate
from orchestrator.convergence.drift import drift_signals


def test_drift_signals_norm_and_cosine_to_the_aggregate() -> None:
    before = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    after = {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}
    along = {"w": np.full((2, 2), 2.0, np.float32), "b": np.full(2, 2.0, np.float32)}
    against = {k: -v for k, v in along.items()}
    updates = [BufferedUpdate(1, "with", 0, 5, along), BufferedUpdate(2, "against", 0, 5, against),
               BufferedUpdate(3, "odd", 0, 5, {"w": np.ones((2, 2), np.float32)})]
    got = drift_signals(updates, before, after)
    assert set(got) == {"with", "against"}
    assert got["with"]["norm"] == pytest.approx(np.sqrt(6 * 4.0))
    assert got["with"]["cosine"] == pytest.approx(1.0)
    assert got["against"]["cosine"] == pytest.approx(-1.0)
    assert drift_signals(updates[:1], before, before)["with"]["cosine"] == 0.0
