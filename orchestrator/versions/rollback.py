"""Rollback: republish an old version's weights as a new version.

The operator's tool and the running service meet in the store: :func:`request_rollback` (the
``fedmq model rollback`` CLI) records a request in server state; the service polls
:func:`pending_rollback` and applies it with :func:`apply_rollback` from its aggregation task
(so no aggregate can commit in between), then publishes the new version, which agents follow.
A request made while the service is down is applied when it starts. Applying is idempotent:
the version it made is recorded under the request's id in the same transaction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.clock import Clock
from orchestrator.errors import OrchestratorError
from orchestrator.store import AuditEvent, Store, StoreError, VersionInfo
from orchestrator.store.state_keys import StateKey
from schemas.tensors import Params

__all__ = [
    "RollbackError",
    "RollbackRequest",
    "RollbackWatch",
    "apply_rollback",
    "pending_rollback",
    "request_rollback",
    "rollback_result",
]

_POLL_S = 1.0


class RollbackError(OrchestratorError):
    """The request cannot be made or applied (one line)."""


@dataclass(frozen=True, slots=True)
class RollbackRequest:
    request_id: str
    version: int
    actor: str
    requested_ms: int

    def to_bytes(self) -> bytes:
        return json.dumps({"request_id": self.request_id, "version": self.version,
                           "actor": self.actor, "requested_ms": self.requested_ms}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> RollbackRequest:
        try:
            d = json.loads(raw)
            return cls(str(d["request_id"]), int(d["version"]), str(d["actor"]),
                       int(d["requested_ms"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RollbackError(f"unreadable rollback request in the store: {exc}") from None


async def request_rollback(store: Store, version: int, *, actor: str, now_ms: int
                           ) -> RollbackRequest:
    """Ask the service to republish ``version``; raises the store's ``NotFoundError`` for an
    unknown version. A newer request replaces one not yet applied."""
    await store.get_version(version)  # exists and its params are intact
    request = RollbackRequest(os.urandom(8).hex(), version, actor, now_ms)
    await store.put_server_state({StateKey.ROLLBACK_REQUEST: request.to_bytes()})
    await store.append_audit(AuditEvent("rollback_requested", actor, detail={
        "version": version, "request_id": request.request_id}))
    return request


async def pending_rollback(store: Store) -> RollbackRequest | None:
    raw = await store.get_server_state(StateKey.ROLLBACK_REQUEST)
    if raw is None:
        return None
    request = RollbackRequest.from_bytes(raw)
    applied = await store.get_server_state(StateKey.ROLLBACK_APPLIED)
    if applied is not None and json.loads(applied).get("request_id") == request.request_id:
        return None
    return request


async def rollback_result(store: Store, request_id: str) -> int | None:
    """The version made for request ``request_id``, once applied."""
    for info in reversed(await store.list_versions()):
        if info.kind == "rollback" and info.lineage.get("request_id") == request_id:
            return info.version
    return None


async def apply_rollback(store: Store, request: RollbackRequest, *, actor: str
                         ) -> tuple[VersionInfo, Params]:
    """Commit ``kind="rollback"`` with the requested version's parameters (parent = that
    version) and mark the request applied; returns the new version and its parameters."""
    try:
        source = await store.get_version(request.version)
    except StoreError as exc:
        # never retried: mark it done, and say why on the record
        await store.put_server_state({StateKey.ROLLBACK_APPLIED: json.dumps(
            {"request_id": request.request_id}).encode()})
        await store.append_audit(AuditEvent("rollback_failed", actor, reason=str(exc)[:200],
                                            detail={"version": request.version,
                                                    "request_id": request.request_id}))
        raise RollbackError(f"rollback to v{request.version} failed: {exc}") from None
    info = await store.commit_version(
        params=source.params, kind="rollback", parent=request.version,
        lineage={"rollback_of": request.version, "requested_by": request.actor,
                 "request_id": request.request_id},
        # marked applied in the same transaction: a crash cannot apply it twice
        server_state={StateKey.ROLLBACK_APPLIED: json.dumps(
            {"request_id": request.request_id}).encode()},
    )
    await store.append_audit(AuditEvent("rollback", actor, detail={
        "version": info.version, "rollback_of": request.version,
        "requested_by": request.actor, "request_id": request.request_id}))
    return info, source.params


class RollbackWatch:
    """The ``rollback`` task: polls the store for a pending request and hands it to the
    aggregator (``request()``: its ``Aggregator.rollback_requested``), which applies it between
    aggregates. The aggregator reads the request again before applying it: it is the only
    task that commits versions."""

    def __init__(self, store: Store, request: Callable[[], None], clock: Clock,
                 interval_s: float = _POLL_S) -> None:
        self._store = store
        self._request = request
        self._clock = clock
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            if await pending_rollback(self._store) is not None:
                self._request()
            await self._clock.sleep(self._interval_s)
