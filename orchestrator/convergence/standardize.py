"""Federated feature standardisation (``[standardize]``), fixed before any training.

While the current version's annex asks for statistics (``wants_stats``), the tasker defers
every device and devices put their local ``FeatureStats`` in their heartbeats. The
standardiser keeps the latest statistics of each device; once ``min_devices`` devices holding
``min_samples`` samples in all have reported, it pools them into the federation's mean and
scale, records them in the current version's annex (in the store, then the version head) and
audits it. The publication then republishes the version with its standardisation, and every
later version inherits it. Nothing is persisted before that: after a restart, devices simply
report again.

A device cannot outweigh the others by claiming more samples: each one's count is capped at
``count_cap`` times the median count of those reporting. A report whose feature count differs
from the first one's is refused (counted in ``standardize.mismatch``).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import MutableMapping
from dataclasses import replace

from orchestrator.config import StandardizeConfig
from orchestrator.store import AuditEvent, Store
from orchestrator.versions.annex import record_annex
from orchestrator.versions.head import VersionHead
from schemas.annex import FeatureStats, pool_stats
from schemas.topics import ORCHESTRATOR_SENDER

__all__ = ["Standardizer"]

log = logging.getLogger(__name__)


class Standardizer:
    def __init__(self, config: StandardizeConfig, *, head: VersionHead, store: Store,
                 counters: MutableMapping[str, int], count_cap: float = 4.0) -> None:
        self._config = config
        self._head = head
        self._store = store
        self._counters = counters
        self._count_cap = count_cap
        self._reports: dict[str, FeatureStats] = {}

    @property
    def waiting(self) -> bool:
        """The current version still waits for its standardisation."""
        return self._head.current.annex.wants_stats

    async def observe(self, device: str, stats: FeatureStats | None) -> None:
        """A heartbeat's statistics (None: it carried none)."""
        if stats is None or not self.waiting:
            return
        first = next(iter(self._reports.values()), None)
        if first is not None and first.n_features != stats.n_features:
            self._counters["standardize.mismatch"] += 1
            return
        self._reports[device] = stats
        self._counters["standardize.reports"] += 1
        parts = self._capped()
        if (len(parts) >= self._config.min_devices
                and sum(p.count for p in parts) >= self._config.min_samples):
            await self._fix(parts)

    def _capped(self) -> list[FeatureStats]:
        parts = list(self._reports.values())
        cap = max(1, int(self._count_cap * statistics.median(p.count for p in parts)))
        return [replace(p, count=min(p.count, cap), m2=[v * min(p.count, cap) / p.count
                                                        for v in p.m2]) for p in parts]

    async def _fix(self, parts: list[FeatureStats]) -> None:
        mean, scale = pool_stats(parts)
        model = self._head.current
        annex = replace(model.annex, feature_mean=mean, feature_scale=scale, wants_stats=False)
        devices, samples = len(parts), sum(p.count for p in parts)
        await record_annex(self._store, self._head, annex,
                           standardized={"devices": devices, "samples": samples})
        await self._store.append_audit(AuditEvent("standardized", ORCHESTRATOR_SENDER, detail={
            "version": model.version, "devices": devices, "samples": samples,
            "features": len(mean)}))
        self._reports.clear()
        self._counters["standardize.fixed"] += 1
        log.info("standardisation fixed on v%d from %d devices (%d samples, %d features)",
                 model.version, devices, samples, len(mean))
