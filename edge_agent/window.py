"""The sliding window of the newest samples, and the ledger of files already consumed.

Pure bookkeeping, no I/O (``datastream`` reads the files around it). Every sample gets a
running index when it enters the window; whether it is held out for evaluation depends only
on that index (a hash of it), so a sample never moves between train and holdout as the window
slides or the agent restarts. The ledger remembers consumed files by name, size and mtime,
bounded: once it holds more than ``max_entries`` the oldest are forgotten and a watermark (the
newest forgotten ``(mtime, name)``) stands for them — anything at or below it counts as seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import LocalData

__all__ = ["FileKey", "Ledger", "LedgerEntry", "SampleWindow", "holdout_mask"]

_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def holdout_mask(index: np.ndarray, fraction: float, salt: int = 0) -> np.ndarray:
    """True where the sample with running ``index`` is held out (splitmix64 of the index:
    about ``fraction`` of all indices, the same answer for an index every time)."""
    if fraction <= 0:
        return np.zeros(len(index), dtype=bool)
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64(salt % 2**64) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    uniform = (z >> np.uint64(11)).astype(np.float64) / 2.0**53
    return np.asarray(uniform < fraction, dtype=bool)


@dataclass(frozen=True, slots=True)
class _Block:
    first: int
    """Running index of the block's first sample."""
    data: LocalData


class SampleWindow:
    """At most ``capacity`` samples, the newest ones, in blocks as they arrived."""

    def __init__(self, capacity: int, *, holdout: float = 0.0, salt: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"window capacity must be positive, got {capacity!r}")
        self.capacity = capacity
        self._holdout = holdout
        self._salt = salt
        self._blocks: list[_Block] = []
        self._size = 0
        self.n_features: int | None = None
        self._split: tuple[LocalData, LocalData] | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def indices(self) -> np.ndarray:
        """Running indices of the samples in the window, oldest first."""
        parts = [np.arange(b.first, b.first + len(b.data), dtype=np.int64) for b in self._blocks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def add(self, first: int, data: LocalData) -> int:
        """Append ``data`` (running indices from ``first``); returns how many of the oldest
        samples (counting ``data``'s own, when it alone is over the capacity) were dropped to
        stay within the capacity."""
        if self.n_features is not None and data.n_features != self.n_features:
            raise ValueError(f"{data.n_features} features, the window has {self.n_features}")
        if len(data) == 0:
            return 0
        self.n_features = data.n_features
        skip = max(0, len(data) - self.capacity)
        if skip:  # only the newest part of an oversized block fits
            data = _slice(data, skip)
            first += skip
        self._blocks.append(_Block(first, data))
        self._size += len(data)
        self._split = None
        return skip + self._evict()

    def _evict(self) -> int:
        evicted = 0
        while self._size > self.capacity:
            oldest = self._blocks[0]
            excess = self._size - self.capacity
            if excess >= len(oldest.data):
                self._blocks.pop(0)
                cut = len(oldest.data)
            else:
                self._blocks[0] = _Block(oldest.first + excess, _slice(oldest.data, excess))
                cut = excess
            self._size -= cut
            evicted += cut
        return evicted

    def split(self) -> tuple[LocalData, LocalData]:
        """``(train, holdout)`` of the current window (holdout 0: both are the whole window),
        computed once per change."""
        if self._split is None:
            whole = self._whole()
            if self._holdout <= 0:
                self._split = (whole, whole)
            else:
                held = holdout_mask(self.indices, self._holdout, self._salt)
                self._split = (_take(whole, ~held), _take(whole, held))
        return self._split

    def _whole(self) -> LocalData:
        if not self._blocks:
            return LocalData(np.zeros((0, self.n_features or 0), np.float32), None)
        if len(self._blocks) == 1:
            return self._blocks[0].data
        ys = [b.data.y for b in self._blocks]
        y = None if any(v is None for v in ys) else np.concatenate([v for v in ys if v is not None])
        return LocalData(np.concatenate([b.data.X for b in self._blocks]), y)


def _slice(data: LocalData, start: int) -> LocalData:
    return LocalData(data.X[start:].copy(), data.y[start:].copy() if data.y is not None else None)


def _take(data: LocalData, mask: np.ndarray) -> LocalData:
    return LocalData(data.X[mask], data.y[mask] if data.y is not None else None)


# -- the ledger --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class FileKey:
    """A file as the poller saw it; a file rewritten in place is a new key."""

    mtime_ns: int
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    key: FileKey
    first: int
    """Running index of the file's first sample."""
    count: int
    """Samples it gave (0: refused)."""

    def to_record(self) -> list[Any]:
        return [self.key.name, self.key.size, self.key.mtime_ns, self.first, self.count]

    @classmethod
    def from_record(cls, record: Any) -> LedgerEntry:
        name, size, mtime_ns, first, count = record
        return cls(FileKey(int(mtime_ns), str(name), int(size)), int(first), int(count))


class Ledger:
    """Files consumed (accepted or refused), oldest first, at most ``max_entries``."""

    def __init__(self, max_entries: int = 1024, *, entries: Iterable[LedgerEntry] = (),
                 watermark: tuple[int, str] | None = None, next_index: int = 0,
                 n_features: int | None = None) -> None:
        self.max_entries = max_entries
        self._entries = list(entries)
        self._keys = {e.key for e in self._entries}
        self.watermark = watermark
        self.next_index = next_index
        """The running index the next sample gets."""
        self.n_features = n_features
        self._trim()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(self._entries)

    def seen(self, key: FileKey) -> bool:
        if key in self._keys:
            return True
        return self.watermark is not None and (key.mtime_ns, key.name) <= self.watermark

    def record(self, key: FileKey, count: int) -> LedgerEntry:
        """``key`` consumed with ``count`` samples (0: refused); they get the next indices."""
        entry = LedgerEntry(key, self.next_index, count)
        self.next_index += count
        self._entries.append(entry)
        self._keys.add(key)
        self._trim()
        return entry

    def _trim(self) -> None:
        while len(self._entries) > self.max_entries:
            old = self._entries.pop(0)
            self._keys.discard(old.key)
            mark = (old.key.mtime_ns, old.key.name)
            self.watermark = mark if self.watermark is None else max(self.watermark, mark)

    def newest_covering(self, n: int) -> list[LedgerEntry]:
        """The newest accepted entries holding ``n`` samples between them, oldest first."""
        picked: list[LedgerEntry] = []
        total = 0
        for entry in reversed(self._entries):
            if total >= n:
                break
            if entry.count > 0:
                picked.append(entry)
                total += entry.count
        return picked[::-1]

    def to_record(self) -> dict[str, Any]:
        return {"next": self.next_index, "features": self.n_features,
                "watermark": list(self.watermark) if self.watermark else None,
                "files": [e.to_record() for e in self._entries]}

    @classmethod
    def from_record(cls, record: Any, max_entries: int) -> Ledger:
        """A ledger from ``to_record``'s output; anything else is a fresh one."""
        if not isinstance(record, dict):
            return cls(max_entries)
        mark = record.get("watermark")
        features = record.get("features")
        return cls(max_entries,
                   entries=[LedgerEntry.from_record(r) for r in record.get("files", [])],
                   watermark=(int(mark[0]), str(mark[1])) if mark else None,
                   next_index=int(record.get("next", 0)),
                   n_features=int(features) if features is not None else None)
