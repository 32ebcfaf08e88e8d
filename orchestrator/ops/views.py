"""What operators are shown: the fleet rows, the federation's status and the privacy report.

One :class:`OperatorViews` per service, held by the
:class:`~orchestrator.ops.desk.OperatorDesk`: the retained fleet summary and the operator
commands (:mod:`orchestrator.ops.commands`) read the same figures from it. It reads the store
and the service's live parts and keeps two caches: device classes found in the ledger, and the
privacy report (recomputed only when its inputs change).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

from orchestrator.clock import Clock
from orchestrator.config import Config
from orchestrator.convergence.stopper import Stopper
from orchestrator.convergence.stopping import StoppingState
from orchestrator.devices.selection import OutstandingTasks
from orchestrator.ingest.buffer_cache import Buffer
from orchestrator.metrics.prometheus import Metrics
from orchestrator.ops.fleet_summary import fleet_rows, fleet_totals
from orchestrator.privacy import (
    DpPolicy,
    FederationAccountant,
    PrivacySummary,
    summarize,
)
from orchestrator.store import Device, Store
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.head import VersionHead

__all__ = ["OperatorViews"]

_EVALUATIONS = 5


class OperatorViews:
    """See the module docstring."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        head: VersionHead,
        buffer: Buffer,
        outstanding: OutstandingTasks,
        metrics: Metrics,
        clock: Clock,
        stopper: Stopper | None = None,
    ) -> None:
        """``stopper``: what ``federation.resume`` asks (the one command that changes
        anything)."""
        self.stopper = stopper
        self._config = config
        self.store = store
        self.head = head
        self._buffer = buffer
        self._outstanding = outstanding
        self._metrics = metrics
        self._clock = clock
        self._fed = config.federation.id
        self._classes: dict[str, str] = {}
        self._privacy_key: tuple[bytes | None, bytes | None] | None = None
        self._privacy: PrivacySummary | None = None

    async def fleet(self) -> dict[str, Any]:
        """``fleet.status``: every device row plus the fleet totals."""
        devices = await self.store.list_devices(role="device")
        privacy = await self.privacy()
        spend = ({d.device_id: _finite(d.epsilon) for d in privacy.devices}
                 if privacy is not None else {})
        now = self._clock.wall_ms()
        rows = fleet_rows(devices, now_ms=now, current_version=self.head.version,
                          heartbeat_s=self._config.federation.heartbeat_s,
                          classes=await self._device_classes(devices), privacy=spend)
        totals = fleet_totals(rows)
        return {"ts_ms": now, "federation": self._fed, "version": self.head.version,
                "totals": totals.to_dict(), "devices": rows}

    async def federation(self, fleet: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``federation.status``: version, buffer, ingest, evaluations, stopping rules."""
        cfg, store, head = self._config, self.store, self.head
        if fleet is None:
            fleet = await self.fleet()
        snap = self._metrics.snapshot()
        versions = await store.list_versions()
        evaluations = [_evaluation(v.version, v.created_ms, v.metrics)
                       for v in versions[-_EVALUATIONS:]]
        raw = await store.get_server_state(StateKey.STOPPING)
        state = StoppingState.from_bytes(raw) if raw is not None else None
        s = cfg.stopping
        privacy = await self.privacy()
        return {
            "federation": self._fed,
            "ts_ms": self._clock.wall_ms(),
            "mode": cfg.aggregation.mode,
            "version": head.version,
            "published_version": head.published_version,
            "buffer": {"fill": self._buffer.count, "capacity": cfg.aggregation.k},
            "outstanding_tasks": len(self._outstanding),
            "ingest": {"rate_per_s": snap["rate_per_s"], "updates": snap["updates"],
                       "latency_s": snap["ingest_latency_s"]},
            "devices": fleet["totals"],
            "last_evaluations": evaluations,
            "stopping": {
                "enabled": s.enabled, "stopped": head.stopped is not None,
                "reason": head.stopped,
                "rules": {"target_metric": s.target_metric, "patience": s.patience,
                          "min_delta": s.min_delta, "max_versions": s.max_versions,
                          "max_wall_s": s.max_wall_s},
                "best_metric": state.best_metric if state else None,
                "best_version": state.best_version if state else None,
                "since_best": state.since_best if state else 0,
                "started_ms": state.started_ms if state else None,
            },
            "privacy_epsilon": _finite(privacy.epsilon) if privacy is not None else None,
        }

    async def privacy(self) -> PrivacySummary | None:
        """The privacy report (None: differential privacy was never used); recomputed only
        when the accountant or the policy changed (the PLD accountant takes seconds)."""
        store = self.store
        policy_state = await store.get_server_state(StateKey.PRIVACY_POLICY)
        accountant_state = await store.get_server_state(StateKey.ACCOUNTANT)
        if policy_state is None and accountant_state is None:
            return None
        key = (policy_state, accountant_state)
        if key != self._privacy_key:
            records = await store.privacy_ledger()
            devices = await store.list_devices(role="device")
            policy = DpPolicy.from_bytes(policy_state) if policy_state is not None else None
            accountant = (FederationAccountant.from_state(accountant_state)
                          if accountant_state is not None else None)
            self._privacy = await asyncio.to_thread(
                summarize, policy, accountant, records, [d.device_id for d in devices])
            self._privacy_key = key
        return self._privacy

    async def _device_classes(self, devices: list[Device]) -> dict[str, str]:
        """Device classes the registry does not hold, from each device's latest accepted
        update (looked up once per device, and only for devices with one)."""
        for d in devices:
            if (d.device_class or d.device_id in self._classes
                    or d.accepted_count + d.quarantine_count == 0):
                continue
            latest = await self.store.ledger(
                sender=d.device_id, status=("buffered", "applied", "quarantined"), limit=1,
                newest_first=True)
            klass = latest[0].meta.get("device_class") if latest else None
            if isinstance(klass, str) and klass:
                self._classes[d.device_id] = klass
        return self._classes


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _evaluation(version: int, created_ms: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A version's evaluations: the server's, and the federated ones weighted by samples."""
    server = {k[len("server_"):]: v for k, v in metrics.items() if k.startswith("server_")}
    samples, loss, metric = 0, 0.0, 0.0
    for name, entry in metrics.items():
        if name.startswith("federated/") and isinstance(entry, dict):
            n = entry.get("samples")
            if isinstance(n, int) and n > 0 and _finite(entry.get("loss")) is not None \
                    and _finite(entry.get("metric")) is not None:
                samples += n
                loss += n * entry["loss"]
                metric += n * entry["metric"]
    federated = ({"devices": sum(1 for k in metrics if k.startswith("federated/")),
                  "samples": samples, "loss": loss / samples, "metric": metric / samples}
                 if samples else None)
    return {"version": version, "created_ms": created_ms, "updates": metrics.get("updates"),
            "server": server or None, "federated": federated}
