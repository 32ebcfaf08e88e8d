"""A device's standing changed: what the running service does about it.

Screening isolates a device (:meth:`Standing.isolated`); another process revokes, deletes or
reinstates one, which :class:`RegistryWatch` notices by polling the registry generation about
once a second (:meth:`Standing.changed`). Either way the device's outstanding task and its
selection state are forgotten, and the device is told (``Control``); a revoked device is told
by :class:`~orchestrator.devices.revocation.Revocations`, which each poll drives.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from typing import Protocol

from orchestrator.clock import Clock
from orchestrator.devices.registry import DeviceView, Registry
from orchestrator.devices.revocation import Revocations
from orchestrator.devices.selection import BasicSelection, OutstandingTasks
from orchestrator.link.sender import Outbound
from schemas.messages import Control, ControlAction
from schemas.topics import DownKind

__all__ = ["RegistryWatch", "Standing"]

log = logging.getLogger(__name__)

_POLL_S = 1.0


class Reinstatable(Protocol):
    def reinstate(self, device: str) -> None: ...


class Standing:
    def __init__(self, *, registry: Registry, outstanding: OutstandingTasks,
                 selection: BasicSelection, reinstated: Sequence[Reinstatable],
                 outbound: Outbound, counters: MutableMapping[str, int]) -> None:
        """``reinstated``: what forgets a device's past offences when it is reinstated (the
        screening guard's flags, the rate limiter's buckets)."""
        self._registry = registry
        self._outstanding = outstanding
        self._selection = selection
        self._reinstated = tuple(reinstated)
        self._outbound = outbound
        self._counters = counters

    def _forget(self, device: str) -> None:
        self._outstanding.complete(device)
        self._selection.forget(device)

    async def isolated(self, device: str, reason: str) -> None:
        """Screening isolated ``device`` (committed to the store)."""
        await self._registry.reload_device(device)
        self._forget(device)
        self._counters["isolated"] += 1
        await self._outbound.send(device, DownKind.CONTROL,
                                  Control(ControlAction.ISOLATE, reason))

    async def changed(self, before: DeviceView | None, after: DeviceView | None) -> None:
        """Another process changed a device's status or key (``before``/``after``: None for
        one added or removed)."""
        view = after or before
        assert view is not None
        device = view.device_id
        if after is None or after.status != "active":
            self._forget(device)
        elif before is not None and before.status == "isolated":
            # an operator (fedmq device reinstate) or a flood cooldown reinstated it
            for part in self._reinstated:
                part.reinstate(device)
            await self._outbound.send(device, DownKind.CONTROL,
                                      Control(ControlAction.REINSTATE, "reinstated"))
        log.info("device %s: %s -> %s", device, before.status if before else None,
                 after.status if after else None)


class Syncing(Protocol):
    async def sync(self) -> None: ...


class RegistryWatch:
    """The ``registry`` task: picks up other processes' device changes."""

    def __init__(self, registry: Registry, standing: Standing, clock: Clock,
                 interval_s: float = _POLL_S, *, revocations: Revocations | None = None,
                 rotations: Sequence[Syncing] = ()) -> None:
        """``revocations``: told on every poll (sends ``Control(revoke)``, removes the
        credentials whose time has come); ``rotations``: likewise (key and broker password
        rotations asked for with ``fedmq device rotate``)."""
        self._registry = registry
        self._standing = standing
        self._clock = clock
        self._interval_s = interval_s
        self._revocations = revocations
        self._rotations = rotations

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            await self.poll()

    async def poll(self) -> None:
        for before, after in await self._registry.refresh():
            await self._standing.changed(before, after)
        if self._revocations is not None:
            await self._revocations.sync()
        for rotations in self._rotations:
            await rotations.sync()
