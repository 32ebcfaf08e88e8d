"""When a version is made, and how tasking keeps pace with it: asynchronous or in rounds.

The one place the two aggregation modes differ outside the strategies themselves:

- :class:`AsyncCadence` (FedBuff): a version as soon as ``k`` updates are buffered (with a
  backlog, up to ``max_per_version`` at once); tasks go out whenever fewer than the
  concurrency target are outstanding.
- :class:`SyncCadence` (FedAvg rounds, see :mod:`orchestrator.convergence.sync_rounds`): each
  round tasks up to ``concurrency`` devices on one version and closes at quorum, or at its
  deadline with at least one update; a round that reaches its deadline empty starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from orchestrator.convergence.sync_rounds import SyncRounds

__all__ = ["AsyncCadence", "Cadence", "Slot", "SyncCadence"]


@dataclass(frozen=True, slots=True)
class Slot:
    """What tasking needs to know about the federation's pace for one asking device."""

    outstanding: int
    """Tasks that count against the concurrency target."""
    busy: bool
    """The device may not get a task now (it has one, or the round is done with it)."""
    version: int
    """The version a new task trains on."""


class Cadence(Protocol):
    def ready(self, buffered: int, now_ms: int) -> bool:
        """Make a version now?"""
        ...

    def load_limit(self) -> int | None:
        """How many buffered updates one version takes (None: all of them)."""
        ...

    def on_accepted(self, base_version: int) -> None: ...

    def on_version(self, version: int, now_ms: int) -> None:
        """``version`` is the current one now (aggregated or rolled back to)."""
        ...

    def slot(self, device: str, *, outstanding: int, busy: bool, published: int) -> Slot: ...

    def on_tasked(self, device: str) -> None: ...

    def tick(self, now_ms: int) -> bool:
        """Deadlines; True when a round restarted."""
        ...


@dataclass
class AsyncCadence:
    k: int
    max_per_version: int | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.max_per_version is not None and self.max_per_version < self.k:
            raise ValueError(f"max_per_version must be >= k ({self.k})")

    def ready(self, buffered: int, now_ms: int) -> bool:
        return buffered >= self.k

    def load_limit(self) -> int | None:
        return self.max_per_version or self.k

    def on_accepted(self, base_version: int) -> None:
        return None

    def on_version(self, version: int, now_ms: int) -> None:
        return None

    def slot(self, device: str, *, outstanding: int, busy: bool, published: int) -> Slot:
        return Slot(outstanding, busy, published)

    def on_tasked(self, device: str) -> None:
        return None

    def tick(self, now_ms: int) -> bool:
        return False


class SyncCadence:
    def __init__(self, rounds: SyncRounds) -> None:
        self._rounds = rounds

    def start(self, version: int, now_ms: int, buffered_bases: list[int]) -> None:
        """Open the first round on ``version``, counting what a previous run buffered."""
        self._rounds.open(version, now_ms)
        for base in buffered_bases:
            self._rounds.on_accepted(base)

    def ready(self, buffered: int, now_ms: int) -> bool:
        return self._rounds.due(now_ms)

    def load_limit(self) -> int | None:
        return None

    def on_accepted(self, base_version: int) -> None:
        self._rounds.on_accepted(base_version)

    def on_version(self, version: int, now_ms: int) -> None:
        self._rounds.open(version, now_ms)

    def slot(self, device: str, *, outstanding: int, busy: bool, published: int) -> Slot:
        r = self._rounds.current
        if r is None:
            return Slot(self._rounds.concurrency, True, published)
        return Slot(len(r.assigned), busy or not self._rounds.may_task(device), r.version)

    def on_tasked(self, device: str) -> None:
        self._rounds.assign(device)

    def tick(self, now_ms: int) -> bool:
        return self._rounds.restart_if_empty(now_ms)
