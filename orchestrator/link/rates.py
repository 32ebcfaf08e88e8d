"""Per-sender rate limits: the cheapest check, made on every message before anything else.

The broker's ACL guarantees that a message on ``fl/{fed}/up/{dev}/…`` (or
``ops/request/{op}``) was published by account ``dev`` (``op``), so the topic names the sender
before a byte of the payload is read. Each sender has a token bucket per :class:`Lane` and one
for its bytes over all lanes; a message that finds either empty is dropped unread. Refusals
are coalesced per sender and lane for the audit log (:meth:`RateLimiter.take_refusals`), and a
sender refused for ``flood_after_s``, or ``flood_after_refused`` times, without a pause is
reported once as a :class:`Flood`.

State is bounded: at most ``max_senders`` senders are kept, the least recently heard
forgotten first (a forgotten sender starts again with full buckets, which is harmless).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.clock import Clock
from orchestrator.config import LimitsConfig

__all__ = ["Flood", "Lane", "RateLimiter", "Refusals", "TokenBucket"]

PAUSE_S = 1.0
"""A refusal streak ends when a sender stays this long without being refused."""


class Lane(StrEnum):
    UPDATES = "updates"
    CONTROL = "control"
    """enroll, status and eval"""
    OPS = "ops"


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a message costs ``cost`` tokens."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many (refilled up to ``now`` first)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def give_back(self, cost: float) -> None:
        self.tokens = min(self.burst, self.tokens + cost)


@dataclass
class Refusals:
    """One sender's refused messages on one lane since the last :meth:`take_refusals`."""

    sender: str
    lane: Lane
    count: int
    bytes: int
    first_ms: int
    last_ms: int


@dataclass(frozen=True)
class Flood:
    """A sender refused without a pause for ``flood_after_s`` or ``flood_after_refused``
    times."""

    sender: str
    lane: Lane
    """The lane of the refusal that completed the streak."""
    since_ms: int
    refused: int
    """Messages refused during the streak."""


class _Sender:
    __slots__ = ("bytes", "flooded", "lanes", "last_refused", "streak", "streak_count",
                 "streak_ms")

    def __init__(self) -> None:
        self.lanes: dict[Lane, TokenBucket] = {}
        self.bytes: TokenBucket | None = None
        self.streak: float | None = None
        self.streak_ms = 0
        self.streak_count = 0
        self.last_refused = 0.0
        self.flooded = False


class RateLimiter:
    def __init__(self, limits: LimitsConfig, clock: Clock) -> None:
        self._limits = limits
        self._clock = clock
        self._rates = {Lane.UPDATES: (limits.updates_per_s, limits.updates_burst),
                       Lane.CONTROL: (limits.control_per_s, limits.control_burst),
                       Lane.OPS: (limits.ops_per_s, limits.ops_burst)}
        self._senders: OrderedDict[str, _Sender] = OrderedDict()
        self._refusals: dict[tuple[str, Lane], Refusals] = {}
        self._floods: list[Flood] = []

    def admit(self, sender: str, lane: Lane, nbytes: int) -> bool:
        """Whether a message of ``nbytes`` from ``sender`` on ``lane`` may be read."""
        now = self._clock.monotonic()
        state = self._sender(sender)
        bucket = state.lanes.get(lane)
        if bucket is None:
            rate, burst = self._rates[lane]
            bucket = state.lanes[lane] = TokenBucket(rate, burst, now)
        if state.bytes is None:
            state.bytes = TokenBucket(self._limits.bytes_per_s, self._limits.bytes_burst, now)
        if bucket.take(now):
            if state.bytes.take(now, nbytes):
                return True
            bucket.give_back(1.0)  # refused for its bytes: the message slot is not spent
        self._refused(sender, state, lane, nbytes, now)
        return False

    def refuse(self, sender: str, lane: Lane, nbytes: int) -> None:
        """Record a message of ``sender`` dropped before its turn (the link's QoS 0 backlog
        was full): a refusal like any other, towards a flood."""
        self._refused(sender, self._sender(sender), lane, nbytes, self._clock.monotonic())

    def take_refusals(self) -> list[Refusals]:
        """The refusals since the last call, one record per sender and lane."""
        out, self._refusals = list(self._refusals.values()), {}
        return out

    def take_floods(self) -> list[Flood]:
        """Senders that started flooding since the last call (each once per flood)."""
        out, self._floods = self._floods, []
        return out

    def reinstate(self, sender: str) -> None:
        """Forget ``sender`` (full buckets, no streak): it was reinstated."""
        self._senders.pop(sender, None)

    def _sender(self, sender: str) -> _Sender:
        state = self._senders.get(sender)
        if state is None:
            state = self._senders[sender] = _Sender()
            if len(self._senders) > self._limits.max_senders:
                self._senders.popitem(last=False)
        else:
            self._senders.move_to_end(sender)
        return state

    def _refused(self, sender: str, state: _Sender, lane: Lane, nbytes: int,
                 now: float) -> None:
        wall = self._clock.wall_ms()
        record = self._refusals.get((sender, lane))
        if record is None:
            self._refusals[(sender, lane)] = Refusals(sender, lane, 1, nbytes, wall, wall)
        else:
            record.count += 1
            record.bytes += nbytes
            record.last_ms = wall
        if state.streak is None or now - state.last_refused > PAUSE_S:
            state.streak, state.streak_ms, state.streak_count = now, wall, 0
            state.flooded = False
        state.last_refused = now
        state.streak_count += 1
        if not state.flooded and (now - state.streak >= self._limits.flood_after_s
                                  or state.streak_count >= self._limits.flood_after_refused):
            state.flooded = True
            self._floods.append(Flood(sender, lane, state.streak_ms, state.streak_count))
