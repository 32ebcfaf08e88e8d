"""The ``flood`` task: what the rate limiter refused, written down and acted on.

Every ``tick_s`` it collects the limiter's coalesced refusals and, every
``[limits] audit_interval_s``, writes one audit row per sender and lane (event ``refused``,
reason ``rate_limited``, with the count, bytes and first/last time): a flood of any size costs
the store a bounded number of rows. A sender reported as a :class:`~orchestrator.link.rates.Flood`
is isolated (audited, ``Control(isolate)``) and its broker login suspended, so the broker
refuses its connections, until an operator reinstates it (``fedmq device reinstate``) or, when
``flood_cooldown_s`` is set, the cooldown lifts it. The flooders and their release times are
kept in the store (``limits.flooded``), so a restart neither forgets nor restarts a cooldown.
A reinstatement, by the operator or by the cooldown, reaches the service through the registry
watch like any other status change (:meth:`~orchestrator.devices.standing.Standing.changed`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, MutableMapping
from typing import Protocol

from orchestrator.clock import Clock
from orchestrator.config import Config
from orchestrator.devices.logins import restore_login, suspend_login
from orchestrator.devices.registry import Registry, bump_generation
from orchestrator.link.rates import Flood, RateLimiter, Refusals
from orchestrator.store import AuditEvent, NotFoundError, Store
from orchestrator.store.state_keys import StateKey
from schemas.errors import Reason

__all__ = ["FloodWatch"]

log = logging.getLogger(__name__)

_ACTOR = "rate_limiter"


class Isolating(Protocol):
    async def isolated(self, device: str, reason: str) -> None: ...


class FloodWatch:
    def __init__(self, limiter: RateLimiter, *, config: Config, store: Store,
                 registry: Registry, standing: Isolating, counters: MutableMapping[str, int],
                 clock: Clock, tick_s: float = 1.0,
                 suspend: Callable[[Config, str], bool] = suspend_login,
                 restore: Callable[[Config, str], bool] = restore_login) -> None:
        """``suspend``/``restore``: how a login is disabled and given back (blocking file
        work, run in a thread)."""
        self._limiter = limiter
        self._config = config
        self._limits = config.limits
        self._store = store
        self._registry = registry
        self._standing = standing
        self._counters = counters
        self._clock = clock
        self._tick_s = tick_s
        self._suspend = suspend
        self._restore = restore
        self._pending: dict[tuple[str, str], Refusals] = {}
        self._last_audit = clock.monotonic()
        self.flooded: dict[str, int] = {}
        """Isolated flooders and when their cooldown ends (wall ms; 0: never)."""

    async def load(self) -> None:
        raw = await self._store.get_server_state(StateKey.FLOODED)
        self.flooded = {str(k): int(v) for k, v in json.loads(raw).items()} if raw else {}

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._tick_s)
            await self.tick()

    async def tick(self) -> None:
        for record in self._limiter.take_refusals():
            self._merge(record)
        if self._pending and (self._clock.monotonic() - self._last_audit
                              >= self._limits.audit_interval_s):
            await self.write_refusals()
        for flood in self._limiter.take_floods():
            await self._isolate(flood)
        await self._release()

    async def write_refusals(self) -> None:
        """One audit row per sender and lane refused since the last write."""
        pending, self._pending = list(self._pending.values()), {}
        self._last_audit = self._clock.monotonic()
        for r in pending:
            await self._store.append_audit(AuditEvent(
                "refused", _ACTOR, device=r.sender, reason=Reason.RATE_LIMITED.value,
                detail={"lane": r.lane.value, "count": r.count, "bytes": r.bytes,
                        "first_ms": r.first_ms, "last_ms": r.last_ms}))
        self._counters["refused.audit_rows"] += len(pending)

    def _merge(self, record: Refusals) -> None:
        key = (record.sender, record.lane.value)
        seen = self._pending.get(key)
        if seen is None:
            self._pending[key] = record
            return
        seen.count += record.count
        seen.bytes += record.bytes
        seen.last_ms = record.last_ms

    async def _isolate(self, flood: Flood) -> None:
        device = flood.sender
        now = self._clock.wall_ms()
        cooldown_ms = round(self._limits.flood_cooldown_s * 1000)
        until = now + cooldown_ms if cooldown_ms else 0
        view = self._registry.get(device)
        await self.write_refusals()  # the flood's refusals land before its isolation
        if view is not None and view.status not in ("isolated", "revoked"):
            try:
                await self._store.set_status(device, "isolated", audit=AuditEvent(
                    "isolated", _ACTOR, device=device, reason="flood",
                    detail={"lane": flood.lane.value, "refused": flood.refused,
                            "since_ms": flood.since_ms, "until_ms": until or None}))
            except NotFoundError:
                view = None  # deleted meanwhile
            else:
                await self._standing.isolated(device, "flood")
        suspended = await asyncio.to_thread(self._suspend, self._config, device)
        log.warning("sender %s flooded its %s lane (%d refused since %d): isolated, login %s",
                    device, flood.lane.value, flood.refused, flood.since_ms,
                    "suspended" if suspended else "not managed here")
        self._counters["flood.isolated"] += 1
        if view is not None:
            self.flooded[device] = until
            await self._save()

    async def _release(self) -> None:
        """Forget flooders reinstated (or removed) meanwhile; reinstate those whose cooldown
        is over."""
        now = self._clock.wall_ms()
        changed = False
        for device, until in list(self.flooded.items()):
            view = self._registry.get(device)
            if view is None or view.status != "isolated":
                del self.flooded[device]  # the operator reinstated, revoked or deleted it
                changed = True
            elif until and now >= until:
                await asyncio.to_thread(self._restore, self._config, device)
                await self._store.set_status(device, "active", audit=AuditEvent(
                    "reinstated", _ACTOR, device=device, reason="flood_cooldown"))
                await bump_generation(self._store)  # the registry watch tells the service
                del self.flooded[device]
                changed = True
                self._counters["flood.reinstated"] += 1
        if changed:
            await self._save()

    async def _save(self) -> None:
        await self._store.put_server_state(
            {StateKey.FLOODED: json.dumps(self.flooded, sort_keys=True).encode()})
