"""The pure parts of convergence: federated-evaluation bookkeeping, drift signals, and the
rollback request/apply handshake on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.aggregation import BufferedUpdate
from orchestrator.convergence.drift import drift_signals
from orchestrator.convergence.fedeval import FederatedEvaluation, combine_reports
from orchestrator.store import NotFoundError, Store
from orchestrator.versions.rollback import (
    RollbackError,
    apply_rollback,
    pending_rollback,
    request_rollback,
    rollback_result,
)
from schemas import EvalReport, params_digest


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


async def test_a_rollback_request_is_applied_once(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "o.db") as store:
        arch = await store.put_architecture(b"arch")
        v0 = {"w": np.zeros(3, np.float32)}
        await store.commit_version(params=v0, kind="initial", parent=None, arch_hash=arch)
        await store.commit_version(params={"w": np.ones(3, np.float32)}, kind="aggregate",
                                   parent=0)
        assert await pending_rollback(store) is None
        with pytest.raises(NotFoundError):
            await request_rollback(store, 9, actor="cli", now_ms=1)
        request = await request_rollback(store, 0, actor="cli:op", now_ms=1)
        assert await pending_rollback(store) == request
        assert await rollback_result(store, request.request_id) is None
        info, params = await apply_rollback(store, request, actor="orchestrator")
        assert (info.version, info.kind, info.parent) == (2, "rollback", 0)
        assert params_digest(params) == params_digest(v0)
        assert info.lineage["rollback_of"] == 0
        assert await pending_rollback(store) is None
        assert await rollback_result(store, request.request_id) == 2
        events = [e.event for e in await store.list_audit(newest_first=False)]
        assert events == ["rollback_requested", "rollback"]


async def test_a_rollback_to_a_missing_version_fails_once_and_is_recorded(tmp_path: Path
                                                                           ) -> None:
    async with Store.open(tmp_path / "o.db") as store:
        arch = await store.put_architecture(b"arch")
        await store.commit_version(params={"w": np.zeros(1, np.float32)}, kind="initial",
                                   parent=None, arch_hash=arch)
        request = await request_rollback(store, 0, actor="cli", now_ms=1)
        forged = type(request)(request.request_id, 5, request.actor, request.requested_ms)
        with pytest.raises(RollbackError, match="v5"):
            await apply_rollback(store, forged, actor="orchestrator")
        assert await pending_rollback(store) is None  # never retried
        assert [e.event for e in await store.list_audit(event="rollback_failed")] == \
            ["rollback_failed"]
