"""Federated evaluation's bookkeeping (pure): sample-weighted reports, a few devices asked per
version, only its own tasks counted."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.convergence.fedeval import FederatedEvaluation, combine_reports
from schemas import EvalReport


def test_combine_reports_is_sample_weighted() -> None:
    got = combine_reports([(10, 1.0, 0.5), (30, 2.0, 0.9), (0, 9.0, 0.0)])
    assert got == pytest.approx({"federated_loss": 1.75, "federated_metric": 0.8,
                                 "federated_samples": 40.0, "federated_devices": 2.0})
    assert combine_reports([]) == {"federated_samples": 0.0, "federated_devices": 0.0}


def test_federated_evaluation_asks_a_few_devices_per_version_and_counts_only_its_tasks(
) -> None:
    fe = FederatedEvaluation(every=2, devices=2)
    assert not fe.wants("a", 1)  # not a multiple of 2
    assert fe.wants("a", 2)
    fe.on_task("a", "t-a", 2)
    assert not fe.wants("a", 2)  # asked already
    fe.on_task("b", "t-b", 2)
    assert not fe.wants("c", 2)  # two devices per version
    assert fe.on_report("c", EvalReport("t-c", 2, 10, 0.1, 0.9)) is None  # not ours
    assert fe.on_report("b", EvalReport("t-a", 2, 10, 0.1, 0.9)) is None  # a's task
    version, metrics = fe.on_report("a", EvalReport("t-a", 2, 10, 1.0, 0.5)) or (None, {})
    assert version == 2 and metrics["federated_metric"] == 0.5
    _, metrics = fe.on_report("b", EvalReport("t-b", 2, 30, 2.0, 0.9)) or (None, {})
    assert metrics["federated_metric"] == pytest.approx(0.8)
    assert fe.on_report("a", EvalReport("t-a", 2, 10, 1.0, 0.5)) is None  # once only
    assert not FederatedEvaluation(every=0, devices=3).wants("a", 0)


def test_the_threshold_needs_enough_samples_and_ignores_reports_without_histograms() -> None:
    from orchestrator.convergence.fedeval import agreed_threshold
    from schemas.annex import score_histogram

    rng = np.random.default_rng(0)
    hists = [(300, score_histogram(rng.lognormal(0, 0.3, 300)).tolist()) for _ in range(3)]
    assert agreed_threshold(hists[:1], 0.99, 500) == {}
    got = agreed_threshold([*hists, (50, []), (0, hists[0][1])], 0.99, 500)
    assert got["anomaly_samples"] == 900
    assert 1.5 < got["anomaly_threshold"] < 2.8  # lognormal(0, 0.3): 99th pct ~2.0
