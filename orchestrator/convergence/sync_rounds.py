"""Synchronous rounds (for comparison with async FedBuff): pure bookkeeping.

A round trains on one version: up to ``concurrency`` devices get a task; the round closes when
``quorum`` of their updates are in, or at its deadline with at least one (plain FedAvg over the
updates trained on that version). A round that reaches its deadline with none starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SyncRound", "SyncRounds"]


@dataclass
class SyncRound:
    version: int
    opened_ms: int
    deadline_ms: int
    assigned: set[str] = field(default_factory=set)
    received: int = 0


class SyncRounds:
    def __init__(self, *, quorum: int, concurrency: int, deadline_s: float) -> None:
        if quorum < 1 or concurrency < quorum:
            raise ValueError("need 1 <= quorum <= concurrency")
        self.quorum = quorum
        self.concurrency = concurrency
        self._deadline_ms = int(deadline_s * 1000)
        self.current: SyncRound | None = None

    def open(self, version: int, now_ms: int) -> SyncRound:
        self.current = SyncRound(version, now_ms, now_ms + self._deadline_ms)
        return self.current

    def may_task(self, device_id: str) -> bool:
        r = self.current
        return (r is not None and device_id not in r.assigned
                and len(r.assigned) < self.concurrency)

    def assign(self, device_id: str) -> None:
        if self.current is not None:
            self.current.assigned.add(device_id)

    def on_accepted(self, base_version: int) -> None:
        r = self.current
        if r is not None and base_version == r.version:
            r.received += 1

    def due(self, now_ms: int) -> bool:
        """Aggregate now: quorum reached, or the deadline passed with something to average."""
        r = self.current
        if r is None:
            return False
        return r.received >= self.quorum or (now_ms >= r.deadline_ms and r.received > 0)

    def restart_if_empty(self, now_ms: int) -> bool:
        """At the deadline with nothing received: open the same version again."""
        r = self.current
        if r is None or now_ms < r.deadline_ms or r.received > 0:
            return False
        self.open(r.version, now_ms)
        return True
