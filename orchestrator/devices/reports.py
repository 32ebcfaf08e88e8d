"""What active devices report outside their updates: heartbeats (``status``) and federated
evaluation results (``eval``). Both are verified and bound like any message, checked against
the device's replay window, and recorded with it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import MutableMapping
from dataclasses import replace
from typing import Any, Protocol

from nacl.signing import VerifyKey

from orchestrator.convergence.fedeval import FederatedEvaluation
from orchestrator.convergence.standardize import Standardizer
from orchestrator.devices.registry import Registry
from orchestrator.devices.replay_book import ReplayBook
from orchestrator.devices.tasking import Tasker
from orchestrator.link.sender import Outbound
from orchestrator.store import Store
from orchestrator.versions.annex import record_annex
from orchestrator.versions.head import VersionHead
from schemas.envelope import Opened, check_header, decode_body, verify
from schemas.errors import FedmqError, Reason
from schemas.messages import EvalReport, Status
from schemas.replay import Verdict
from schemas.topics import DownKind

__all__ = ["EvalHandler", "RevocationReceipts", "StatusHandler", "open_signed",
           "status_reason"]


class RevocationReceipts(Protocol):
    """Told when a revoked device confirms its revocation (see ``devices.revocation``)."""

    async def confirmed(self, device: str) -> None: ...


def status_reason(status: str) -> Reason:
    """The protocol reason for a message from a device that is not active."""
    return {"revoked": Reason.REVOKED, "isolated": Reason.ISOLATED}.get(
        status, Reason.NOT_AUTHORIZED)


def open_signed(payload: bytes, device_id: str, received_ms: int, *, fed: str,
                registry: Registry, book: ReplayBook) -> tuple[Opened, bool]:
    """Verify and bind an active device's message: ``(opened, fresh)``; a replay or a message
    from a device that is not active raises."""
    view = registry.get(device_id)
    if view is None or view.verify_key is None:
        raise FedmqError(Reason.UNKNOWN_SENDER, f"no key for {device_id!r}")
    opened = verify(payload, view.verify_key)
    check_header(opened.header, fed=fed, sender=device_id, now_ms=received_ms)
    if view.status != "active":
        raise FedmqError(status_reason(view.status), f"device is {view.status}")
    verdict = book.classify(device_id, opened.header.seq)
    if verdict is Verdict.REPLAY:
        raise FedmqError(Reason.REPLAY, f"seq {opened.header.seq}")
    return opened, verdict is Verdict.FRESH


class StatusHandler:
    """Records a heartbeat (last seen, last status, replay window: one row) and answers it
    with what :class:`~orchestrator.devices.tasking.Tasker` decides."""

    def __init__(self, *, fed: str, registry: Registry, book: ReplayBook, tasker: Tasker,
                 outbound: Outbound, counters: MutableMapping[str, int],
                 revocations: RevocationReceipts | None = None,
                 standardizer: Standardizer | None = None) -> None:
        """``standardizer``: told of the statistics in heartbeats (``[standardize]``)."""
        self._fed = fed
        self._standardizer = standardizer
        self._registry = registry
        self._book = book
        self._tasker = tasker
        self._outbound = outbound
        self._counters = counters
        self._revocations = revocations

    async def handle(self, device_id: str, payload: bytes, received_ms: int) -> None:
        view = self._registry.get(device_id)
        if (self._revocations is not None and view is not None and view.status == "revoked"
                and view.verify_key is not None):
            await self._receipt(device_id, payload, received_ms, view.verify_key)
            return
        opened, fresh = open_signed(payload, device_id, received_ms, fed=self._fed,
                                    registry=self._registry, book=self._book)
        if not fresh:
            self._counters["status.duplicate"] += 1
            return
        status = decode_body(opened, Status)
        await self._book.mark_seen(device_id, opened.header.seq, seen_ms=received_ms,
                                   last_status=json.dumps(_jsonable(status)).encode())
        self._counters["status"] += 1
        if self._standardizer is not None:
            await self._standardizer.observe(device_id, status.feature_stats)
        answer = await self._tasker.answer(device_id, status)
        if answer is not None:
            await self._outbound.send(device_id, DownKind.TASK, answer)


    async def _receipt(self, device_id: str, payload: bytes, received_ms: int,
                       key: VerifyKey) -> None:
        """A revoked device's one useful word: a status signed with its (revoked) key saying
        it is revoked confirms that ``Control(revoke)`` arrived. Anything else is refused."""
        assert self._revocations is not None
        opened = verify(payload, key)
        check_header(opened.header, fed=self._fed, sender=device_id, now_ms=received_ms)
        if self._book.classify(device_id, opened.header.seq) is Verdict.REPLAY:
            raise FedmqError(Reason.REPLAY, f"seq {opened.header.seq}")
        status = decode_body(opened, Status)
        if status.reason != "revoked":
            raise FedmqError(Reason.REVOKED, "device is revoked")
        await self._revocations.confirmed(device_id)


class EvalHandler:
    """Records a device's evaluation of a version in that version's metrics (with the
    sample-weighted federation-wide figures once it answers a task of ours)."""

    def __init__(self, *, fed: str, registry: Registry, book: ReplayBook, head: VersionHead,
                 fedeval: FederatedEvaluation, store: Store,
                 counters: MutableMapping[str, int]) -> None:
        self._fed = fed
        self._registry = registry
        self._book = book
        self._head = head
        self._fedeval = fedeval
        self._store = store
        self._counters = counters

    async def handle(self, device_id: str, payload: bytes, received_ms: int) -> None:
        opened, fresh = open_signed(payload, device_id, received_ms, fed=self._fed,
                                    registry=self._registry, book=self._book)
        if not fresh:
            return
        report = decode_body(opened, EvalReport)
        await self._book.mark_seen(device_id, opened.header.seq)
        if 0 <= report.model_version <= self._head.version:
            metrics: dict[str, Any] = {
                f"federated/{device_id}": {"samples": report.num_samples, "loss": report.loss,
                                           "metric": report.metric,
                                           "metric_name": report.metric_name}}
            folded = self._fedeval.on_report(device_id, report)
            if folded is not None and folded[0] == report.model_version:
                metrics.update(folded[1])
            await self._store.set_version_metrics(report.model_version, metrics)
            threshold = metrics.get("anomaly_threshold")
            if isinstance(threshold, float):
                await self._agreed(report.model_version, threshold)
        self._counters["eval_reports"] += 1

    async def _agreed(self, version: int, threshold: float) -> None:
        """A threshold agreed for ``version`` goes out with the current version (unless one
        agreed for a later version already does)."""
        annex = self._head.current.annex
        if annex.threshold_version is not None and annex.threshold_version > version:
            return
        new = replace(annex, anomaly_threshold=threshold, threshold_version=version)
        if new == annex:
            return
        await record_annex(self._store, self._head, new)  # goes out with the current version
        self._counters["anomaly.thresholds"] += 1


_NOT_KEPT = frozenset({"feature_stats"})
"""Status fields not kept in the registry's last status (used once, and kilobytes large)."""


def _jsonable(status: Status) -> dict[str, Any]:
    return {f.name: getattr(status, f.name) for f in dataclasses.fields(status)
            if f.name not in _NOT_KEPT}
