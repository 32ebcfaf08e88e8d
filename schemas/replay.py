"""Per-sender replay protection: a high-water mark plus a bitmap window for reordering.

``classify`` is pure; ``mark`` records a seq once its message has been durably handled. The
state serialises to a few hundred bytes so the orchestrator stores it in the same transaction
as the update it protects (a crash can neither forget a seq nor remember an unstored one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from .errors import DecodeError, Reason

DEFAULT_WINDOW = 4096
_HEADER = struct.Struct("<qI")


class Verdict(StrEnum):
    FRESH = "fresh"
    DUPLICATE = "duplicate"
    """Seen before: acknowledge again, never apply twice."""
    REPLAY = "replay"
    """Below the window: cannot be told apart from an attack, rejected."""
    FUTURE_TIMESTAMP = "future_timestamp"


@dataclass(slots=True)
class ReplayWindow:
    """Seqs are non-negative and, per sender, increase (with some reordering on the wire).

    Bit ``i`` of ``bits`` set means ``high - i`` has been seen; ``high == -1`` means nothing yet.
    The window is generous (4096 by default) because one device's heartbeats, evaluations and
    updates share one seq counter, and updates may wait in an outbox while heartbeats flow.
    """

    size: int = DEFAULT_WINDOW
    high: int = -1
    bits: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0 or self.size % 8:
            raise ValueError("window size must be a positive multiple of 8")

    def classify(self, seq: int, ts_ms: int | None = None, now_ms: int | None = None,
                 max_skew_ms: int = 5 * 60 * 1000) -> Verdict:
        if ts_ms is not None and now_ms is not None and ts_ms > now_ms + max_skew_ms:
            return Verdict.FUTURE_TIMESTAMP
        if seq > self.high:
            return Verdict.FRESH
        offset = self.high - seq
        if offset >= self.size:
            return Verdict.REPLAY
        return Verdict.DUPLICATE if (self.bits >> offset) & 1 else Verdict.FRESH

    def mark(self, seq: int) -> None:
        """Record ``seq`` as seen (idempotent). Only call it for a seq classified FRESH or
        DUPLICATE; a seq below the window is ignored."""
        if seq > self.high:
            shift = seq - self.high if self.high >= 0 else self.size
            # a jump past the window forgets everything: never build a (seq - high)-bit int
            self.bits = 1 if shift >= self.size else (
                ((self.bits << shift) | 1) & ((1 << self.size) - 1))
            self.high = seq
        elif self.high - seq < self.size:
            self.bits |= 1 << (self.high - seq)

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.high, self.size) + self.bits.to_bytes(self.size // 8, "little")

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplayWindow:
        if len(data) < _HEADER.size:
            raise DecodeError(Reason.MALFORMED, "replay window state too short")
        high, size = _HEADER.unpack_from(data)
        if size <= 0 or size % 8 or size > 1 << 20 or len(data) != _HEADER.size + size // 8:
            raise DecodeError(Reason.MALFORMED, "replay window state has a bad size")
        if high < -1:
            raise DecodeError(Reason.MALFORMED, "replay window state has a bad mark")
        return cls(size=size, high=high,
                   bits=int.from_bytes(data[_HEADER.size:], "little"))
