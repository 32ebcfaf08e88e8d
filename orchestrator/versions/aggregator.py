"""The ``aggregate`` task: the only one that commits versions.

Woken when intake commits accepted updates, when a round's deadline passes and when a
rollback is requested, it applies a pending rollback first, then, while the cadence says a
version is due: takes the oldest buffered updates, screens them (quarantine, isolation),
aggregates the rest in a thread with the configured strategy (which ends in the server
optimizer's step), and commits the version with its lineage, metrics, drift signals, privacy
record, optimizer moments and screening state in one transaction. Then the version head moves
on, and publication and evaluation follow it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.aggregation import AggregateResult, BufferedUpdate, ServerOptimizer, Strategy
from orchestrator.clock import Clock
from orchestrator.convergence.drift import drift_signals
from orchestrator.convergence.stopper import Stopper
from orchestrator.devices.registry import Registry
from orchestrator.devices.standing import Standing
from orchestrator.ingest.buffer_cache import Buffer
from orchestrator.metrics.prometheus import Metrics
from orchestrator.privacy.runtime import PrivacyRuntime
from orchestrator.store import Store, VersionInfo
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.cadence import Cadence
from orchestrator.versions.guard import RobustGuard
from orchestrator.versions.head import ModelVersion, VersionHead
from orchestrator.versions.rollback import RollbackError, apply_rollback, pending_rollback
from schemas.annex import annex_to_record
from schemas.tensors import Params
from schemas.topics import ORCHESTRATOR_SENDER

__all__ = ["Aggregator", "Making"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Making:
    """How versions are made: the composed strategy, the optimizer it ends in (its moments
    are committed with each version, and rewound if a commit fails) and the name recorded in
    each version's lineage."""

    strategy: Strategy
    optimizer: ServerOptimizer
    name: str


class Aggregator:
    def __init__(self, making: Making, *, store: Store, head: VersionHead, buffer: Buffer,
                 cadence: Cadence, guard: RobustGuard, standing: Standing,
                 privacy: PrivacyRuntime, registry: Registry, stopper: Stopper,
                 evaluated: bool, due: asyncio.Event, metrics: Metrics,
                 counters: MutableMapping[str, int], clock: Clock) -> None:
        """``evaluated``: an evaluation task feeds the stopping rules (else this does, with
        no metric); ``due``: set to wake this task."""
        self._making = making
        self._store = store
        self._head = head
        self._buffer = buffer
        self._cadence = cadence
        self._guard = guard
        self._standing = standing
        self._privacy = privacy
        self._registry = registry
        self._stopper = stopper
        self._evaluated = evaluated
        self._due = due
        self._metrics = metrics
        self._counters = counters
        self._clock = clock
        self._rollback_due = False

    def rollback_requested(self) -> None:
        self._rollback_due = True
        self._due.set()

    async def run(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            await self._apply_rollback()
            while self._ready():
                started = self._clock.monotonic()
                await self.aggregate_once()
                self._metrics.observe_aggregation(self._clock.monotonic() - started)

    def _ready(self) -> bool:
        return (self._head.stopped is None
                and self._cadence.ready(self._buffer.count, self._clock.wall_ms()))

    async def aggregate_once(self) -> None:
        entries = await self._buffer.oldest(self._cadence.load_limit())
        kept = await self._screened(entries) if entries else []
        if kept:
            model = self._head.current
            result = await asyncio.to_thread(self._making.strategy.aggregate, model.params,
                                             model.version, kept)
            await self._commit(result, kept)
        # a round closes whatever came of it (no-op in async mode)
        self._cadence.on_version(self._head.version, self._clock.wall_ms())

    async def _screened(self, entries: list[BufferedUpdate]) -> list[BufferedUpdate]:
        """The entries left once screening quarantined the flagged ones (see guard.py)."""
        if not self._guard.enabled:
            return entries
        isolated = {d.device_id for d in self._registry.all() if d.status == "isolated"}
        report = await self._guard.screen(self._store, entries, now_ms=self._clock.wall_ms(),
                                          isolated=isolated)
        self._buffer.removed(len(report.quarantined))
        for reason in report.quarantined.values():
            self._counters[f"quarantined.{reason}"] += 1
        for device, reason in report.isolated.items():
            await self._standing.isolated(device, reason)
        return report.kept

    async def _commit(self, result: AggregateResult, entries: list[BufferedUpdate]) -> None:
        if result.params is None:
            await self._reject_all(result)
            return
        model = self._head.current
        staleness = [result.staleness[uid] for uid in result.used_ids]
        devices = {e.update_id: e.devices for e in entries}
        population = sum(1 for d in self._registry.all()
                         if d.role == "device" and d.status == "active")
        # a secure bucket's sum is charged to each of its members
        plan = self._privacy.plan([d for uid in result.used_ids for d in devices[uid]],
                                  population)
        used = set(result.used_ids)
        # each contributor's update norm and cosine to the aggregate, in the version's metrics
        drift = await asyncio.to_thread(drift_signals,
                                        [e for e in entries if e.update_id in used],
                                        model.params, result.params)
        optimizer = self._making.optimizer
        try:
            info = await self._store.commit_version(
                params=result.params, kind="aggregate", parent=model.version,
                lineage={"strategy": self._making.name,
                         "staleness": {str(k): v for k, v in result.staleness.items()},
                         "dropped": {str(k): v for k, v in result.dropped.items()}},
                applied=dict(result.weights), dropped=dict(result.dropped),
                server_state={StateKey.OPTIMIZER: optimizer.state_dict(), **self._guard.state(),
                              **(plan.server_state if plan is not None else {})},
                metrics={**_version_metrics(result, staleness, drift),
                         # inherited: the standardisation, and the threshold agreed so far
                         "annex": annex_to_record(model.annex)},
                privacy=plan.charges if plan is not None else None,
            )
        except BaseException:
            # the optimizer stepped for a version that does not exist: rewind it
            state = await self._store.get_server_state(StateKey.OPTIMIZER)
            if state is not None:
                optimizer.load_state_dict(state)
            raise
        self._buffer.removed(len(result.used_ids) + len(result.dropped))
        self._counters["versions"] += 1
        for versions_behind in staleness:
            self._metrics.observe_staleness(versions_behind)
        self._guard.observe(result.delta)
        if plan is not None:
            await self._privacy.committed(plan, info.version)
        await self._advance(info, result.params)
        if not self._evaluated:
            await self._stopper.on_version(info.version, None)

    async def _reject_all(self, result: AggregateResult) -> None:
        """Nothing usable: the dropped updates leave the buffer, rejected with their reason."""
        by_reason: dict[str, list[int]] = {}
        for uid, reason in result.dropped.items():
            by_reason.setdefault(reason, []).append(uid)
        for reason, ids in by_reason.items():
            await self._store.mark_updates(ids, "rejected", reason)
        self._buffer.removed(len(result.dropped))
        self._counters["aggregate.empty"] += 1

    async def _advance(self, info: VersionInfo, params: Params) -> None:
        await self._head.advance(ModelVersion(info.version, params, info.arch_hash,
                                              info.created_ms, info.parent,
                                              self._head.current.annex))
        self._metrics.set_version(info.version)

    async def _apply_rollback(self) -> None:
        if not self._rollback_due:  # keeps store reads off the per-aggregate path
            return
        self._rollback_due = False
        request = await pending_rollback(self._store)  # again: it may have been applied
        if request is None:
            return
        try:
            info, params = await apply_rollback(self._store, request, actor=ORCHESTRATOR_SENDER)
        except RollbackError as exc:
            log.warning("%s", exc)
            return
        self._counters["rollbacks"] += 1
        log.info("rolled back to v%d's weights as v%d (requested by %s)", request.version,
                 info.version, request.actor)
        await self._advance(info, params)
        self._cadence.on_version(info.version, self._clock.wall_ms())


def _version_metrics(result: AggregateResult, staleness: list[int],
                     drift: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"updates": len(result.used_ids), "dropped": len(result.dropped),
            "delta_norm": result.delta_norm,
            "mean_staleness": float(np.mean(staleness)) if staleness else 0.0,
            **({"drift": drift} if drift else {})}
