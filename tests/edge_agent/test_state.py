"""The agent's SQLite state and outbox, on real files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import StateError
from edge_agent.outbox import Outbox, ResendPolicy
from edge_agent.state import Enrollment, LocalState, StoredModel
from schemas import EnrollStatus, ReplayWindow


def _open(path: Path, device: str = "dev-1", fed: str = "fed") -> LocalState:
    return LocalState(path, device_id=device, fed=fed)


async def test_file_is_private_and_the_key_persists(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "agent.db"
    async with _open(path) as state:
        key = bytes(state.signing_key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for extra in path.parent.glob("agent.db-*"):  # -wal / -shm while they exist
        assert stat.S_IMODE(extra.stat().st_mode) & 0o077 == 0
    async with _open(path) as state:
        assert bytes(state.signing_key) == key


async def test_a_too_open_file_is_restricted(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    path.touch()
    os.chmod(path, 0o644)
    async with _open(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_seqs_are_reserved_durably_and_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    async with _open(path) as state:
        first = [await state.reserve_seq() for _ in range(5)]
    async with _open(path) as state:
        assert state.last_seq == 5
        nxt = await asyncio.gather(*(state.reserve_seq() for _ in range(20)))
    assert first == [1, 2, 3, 4, 5]
    assert sorted(nxt) == list(range(6, 26))  # concurrent reservations never collide


async def test_state_of_another_device_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    async with _open(path):
        pass
    with pytest.raises(StateError, match="belongs to device 'dev-1'"):
        async with _open(path, device="dev-2"):
            pass
    with pytest.raises(StateError):
        async with _open(path, fed="other"):
            pass


async def test_a_corrupt_file_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    path.write_bytes(b"this is not sqlite" * 100)
    os.chmod(path, 0o600)
    with pytest.raises(StateError, match="not a usable state database"):
        async with _open(path):
            pass


async def test_model_enrollment_window_and_values_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    params = {"W": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    window = ReplayWindow()
    window.mark(7)
    window.mark(5)
    async with _open(path) as state:
        assert await state.load_model() is None and await state.enrollment() is None
        await state.save_model(StoredModel(4, params, {"eval": b"e"}, "arch", stopped=True))
        await state.set_enrollment(Enrollment(EnrollStatus.ACTIVE, 12.5))
        await state.save_replay_window(window)
        await state.put("flags", {"isolated": "why"})
    async with _open(path) as state:
        model = await state.load_model()
        assert model is not None and model.version == 4 and model.stopped
        assert list(model.params) == ["W", "b"] and np.array_equal(model.params["W"], params["W"])
        assert model.graphs == {"eval": b"e"} and model.arch_id == "arch"
        assert await state.enrollment() == Enrollment(EnrollStatus.ACTIVE, 12.5)
        restored = await state.replay_window()
        assert restored.high == 7 and restored.to_bytes() == window.to_bytes()
        assert await state.get("flags") == {"isolated": "why"}
        assert await state.get("missing", 3) == 3


async def test_outbox_put_commits_the_residual_in_the_same_transaction(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    residual = {"W": np.full((2, 2), 0.5, np.float32)}
    async with _open(path) as state:
        outbox = await Outbox.open(state)
        await outbox.put(1, b"a" * 10, created_ms=100, residual=residual)
        await outbox.put(2, b"b" * 20, created_ms=200)
        assert len(outbox) == 2 and outbox.nbytes == 30
        with pytest.raises(sqlite3.IntegrityError):
            await outbox.put(2, b"again", created_ms=300, residual={"W": np.zeros((2, 2))})
        assert len(outbox) == 2
    async with _open(path) as state:
        outbox = await Outbox.open(state)
        assert len(outbox) == 2 and outbox.nbytes == 30
        assert [e.seq for e in await outbox.pending()] == [1, 2]
        kept = await state.residual()
        assert np.array_equal(kept["W"], residual["W"])  # the failed put changed nothing
        assert await outbox.ack([2, 9]) == 1
        assert [e.envelope for e in await outbox.pending()] == [b"a" * 10]


async def test_due_entries_follow_the_resend_policy(tmp_path: Path) -> None:
    async with _open(tmp_path / "agent.db") as state:
        outbox = await Outbox.open(state, ResendPolicy(ack_timeout_ms=1000, max_timeout_ms=3000))
        for seq in range(1, 6):
            await outbox.put(seq, bytes(100), created_ms=0)
        due, _ = await outbox.due(10_000, connected_since_ms=5_000, limit=3, max_bytes=10**6)
        assert [e.seq for e in due] == [1, 2, 3]
        await outbox.mark_sent([1, 2, 3], 10_000)
        due, next_due = await outbox.due(10_000, connected_since_ms=5_000, limit=10,
                                         max_bytes=250)
        assert [e.seq for e in due] == [4, 5] and next_due == 11_000
        await outbox.mark_sent([4, 5], 10_000)
        due, next_due = await outbox.due(10_500, connected_since_ms=5_000, limit=10,
                                         max_bytes=10**6)
        assert due == [] and next_due == 11_000
        due, _ = await outbox.due(11_000, connected_since_ms=5_000, limit=10, max_bytes=10**6)
        assert [e.seq for e in due] == [1, 2, 3, 4, 5]
        await outbox.mark_sent([1], 11_000)  # second attempt: waits twice as long
        due, _ = await outbox.due(12_500, connected_since_ms=5_000, limit=1, max_bytes=10**6)
        assert [e.seq for e in due] == [2]
        # a new connection: everything sent on the old one is due at once
        due, _ = await outbox.due(11_001, connected_since_ms=11_001, limit=10, max_bytes=10**6)
        assert [e.seq for e in due] == [1, 2, 3, 4, 5]
        assert ResendPolicy(1000, 3000).timeout_ms(10) == 3000


async def test_one_oversized_entry_is_still_sent_alone(tmp_path: Path) -> None:
    async with _open(tmp_path / "agent.db") as state:
        outbox = await Outbox.open(state)
        await outbox.put(1, bytes(500), created_ms=0)
        await outbox.put(2, bytes(10), created_ms=0)
        due, next_due = await outbox.due(0, connected_since_ms=0, limit=10, max_bytes=100)
        assert [e.seq for e in due] == [1] and next_due == 0
