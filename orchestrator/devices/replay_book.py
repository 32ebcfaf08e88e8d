"""Every sender's replay window, twice: as judged so far and as committed to the store.

Updates are judged (in decode workers) before their group is committed, so a device's next
batch must be judged against the seqs the previous one marked even while that commit is still
under way: the *judging* window runs ahead. The *committed* window is what the store holds; it
is written in the same transaction as the updates it protects (:meth:`ReplayBook.committed_with`
then :meth:`ReplayBook.adopt`, under :meth:`ReplayBook.writing`), or, for heartbeats, eval
reports and operator requests, by :meth:`ReplayBook.mark_seen`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from orchestrator.store import Store
from schemas.replay import ReplayWindow, Verdict

__all__ = ["ReplayBook", "copy_window"]


def copy_window(window: ReplayWindow) -> ReplayWindow:
    return ReplayWindow(size=window.size, high=window.high, bits=window.bits)


class ReplayBook:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._committed: dict[str, ReplayWindow] = {}
        self._judging: dict[str, ReplayWindow] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        for sender, state in (await self._store.load_replay_windows()).items():
            self._committed[sender] = ReplayWindow.from_bytes(state)
            self._judging[sender] = copy_window(self._committed[sender])

    def _window(self, sender: str) -> ReplayWindow:
        window = self._judging.get(sender)
        if window is None:
            window = self._judging[sender] = ReplayWindow()
            self._committed.setdefault(sender, ReplayWindow())
        return window

    def classify(self, sender: str, seq: int) -> Verdict:
        """``seq`` against what was judged so far."""
        return self._window(sender).classify(seq)

    def for_judging(self, sender: str) -> ReplayWindow:
        """A copy of the judging window, for a decode worker to mark."""
        return copy_window(self._window(sender))

    def mark_judged(self, marks: Mapping[str, Iterable[int]]) -> None:
        for sender, seqs in marks.items():
            window = self._window(sender)
            for seq in seqs:
                window.mark(seq)

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """Held while a window is written to the store and adopted: one writer at a time."""
        async with self._lock:
            yield

    def committed_with(self, marks: Mapping[str, Iterable[int]]) -> dict[str, ReplayWindow]:
        """Copies of the committed windows with ``marks`` applied (to store, then adopt)."""
        states: dict[str, ReplayWindow] = {}
        for sender, seqs in marks.items():
            window = copy_window(self._committed.get(sender) or ReplayWindow())
            for seq in seqs:
                window.mark(seq)
            states[sender] = window
        return states

    def adopt(self, states: Mapping[str, ReplayWindow]) -> None:
        """``states`` are in the store now."""
        self._committed.update(states)

    async def mark_seen(self, sender: str, seq: int, **heartbeat: Any) -> None:
        """Mark one message seen and store the window; with ``heartbeat`` fields (``seen_ms``,
        ``last_status``), as part of the device's heartbeat row."""
        async with self._lock:
            self._window(sender).mark(seq)
            committed = self._committed[sender]
            committed.mark(seq)
            if heartbeat:
                await self._store.record_heartbeat(sender, replay_state=committed.to_bytes(),
                                                   **heartbeat)
            else:
                await self._store.save_replay_windows({sender: committed.to_bytes()})

    async def reset(self, sender: str) -> None:
        """A (re-)enrolled key starts a fresh seq history."""
        async with self._lock:
            self._committed[sender] = ReplayWindow()
            self._judging[sender] = ReplayWindow()
            await self._store.save_replay_windows({sender: ReplayWindow().to_bytes()})
