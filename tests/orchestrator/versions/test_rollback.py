"""The rollback request/apply handshake on a real SQLite store: applied once, and a rollback to
a missing version fails once and is recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.store import NotFoundError, Store
from orchestrator.versions.rollback import (
    RollbackError,
    apply_rollback,
    pending_rollback,
    request_rollback,
    rollback_result,
)
from schemas import params_digest


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
