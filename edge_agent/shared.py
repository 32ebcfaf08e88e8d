"""Small objects the agent's parts share instead of calling back into the ``Agent``.

Each is handed explicitly to the parts that need it: counters (``AgentStats``), a change
signal (``Pulse``), the shutdown request (``Shutdown``), the settings the orchestrator may
reconfigure (``Settings``), the measured training pace (``Pace``), and the two ways work
leaves the event loop (``Offload`` for CPU work, ``ProbeReader`` for the device probe).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .probes import DeviceProbe, DeviceState

__all__ = ["AgentStats", "Offload", "Pace", "ProbeReader", "Pulse", "Settings", "Shutdown",
           "run_to_end", "signal_all"]

T = TypeVar("T")


@dataclass(slots=True)
class AgentStats:
    """Counters for tests, the simulator and logs."""

    tasks_received: int = 0
    tasks_dropped: int = 0
    updates_built: int = 0
    batches_sent: int = 0
    entries_sent: int = 0
    acked: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0
    evaluations: int = 0
    statuses_sent: int = 0
    enrolls_sent: int = 0
    models_adopted: int = 0
    rotations_sent: int = 0
    keys_rotated: int = 0
    password_receipts: int = 0
    paused: collections.Counter[str] = field(default_factory=collections.Counter)
    data_files: int = 0
    """Data files taken into the sliding window (``datastream``)."""
    data_samples: int = 0
    data_refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Data files refused, by ``datastream.Refusal``."""
    scored: int = 0
    """Incoming samples scored for anomalies (``scoring.AnomalyMonitor``)."""
    anomalies: int = 0
    """Of those, the ones above the federation's threshold."""


class Pulse:
    """Wakes every current waiter when fired (an Event that re-arms itself)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


def signal_all(*targets: asyncio.Event | Pulse) -> Callable[[], None]:
    """One callback that sets every event and fires every pulse in ``targets`` (for hooks
    such as the session's ``on_connect``)."""

    def signal() -> None:
        for target in targets:
            if isinstance(target, Pulse):
                target.fire()
            else:
                target.set()

    return signal


class Shutdown:
    """The agent's one stop request, and why the agent ended by itself (if it did)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.finished: str | None = None
        """``revoked``, ``enrollment_rejected``: the agent ended by itself; else None."""

    @property
    def stopping(self) -> bool:
        """Read from the training thread too (a plain attribute read)."""
        return self.requested.is_set()

    def request(self) -> None:
        self.requested.set()

    def finish(self, reason: str) -> None:
        """The agent ends by itself (revoked, enrollment rejected)."""
        self.finished = reason
        self.request()


@dataclass(slots=True)
class Settings:
    """What the orchestrator may change at run time (``Control(reconfigure)``), persisted."""

    heartbeat_s: float | None = None

    def to_record(self) -> dict[str, float]:
        return {} if self.heartbeat_s is None else {"heartbeat_s": self.heartbeat_s}

    @classmethod
    def from_record(cls, record: Any) -> Settings:
        value = record.get("heartbeat_s") if isinstance(record, dict) else None
        return cls(float(value) if isinstance(value, int | float) and value > 0 else None)


@dataclass(slots=True)
class Pace:
    """The measured (or simulated) time of one training step, reported in heartbeats."""

    step_time_ms: float | None = None


class Offload:
    """Runs CPU-bound work (training, decoding, signing large updates) off the event loop."""

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


class ProbeReader:
    """The device probe, read in a worker thread (sysfs reads may block)."""

    def __init__(self, probe: DeviceProbe, offload: Offload) -> None:
        self.probe = probe
        self._offload = offload

    async def read(self) -> DeviceState:
        return await self._offload.run(self.probe.read)

    async def link_up(self) -> bool:
        return (await self.read()).link_up


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` to its end even when the caller is cancelled meanwhile, then let the
    cancellation through. For a durable write and the bookkeeping that goes with it: a COMMIT
    whose await is cancelled still runs on aiosqlite's thread, so cancelling in between would
    leave a committed entry the in-memory counts never saw."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait([task])
        raise
