"""``DirectorySource``: a directory of data files followed on a fake clock — files arriving,
the window sliding, a half-written file waiting, refusals counted, a restart not re-ingesting,
and the holdout split stable across all of that."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from edge_agent.datastream import LEDGER_KEY, DataDirectory, DirectorySource, ValueStore
from edge_agent.shared import AgentStats, Offload, Pulse
from edge_agent.state import LocalState
from tests.support.agent_clock import FakeClock

POLL_S = 2.0
_T0 = 1_700_000_000 * 10**9  # mtimes are set by hand: the order of arrival is the test's


class DictStore:
    """The ledger's store, through msgpack like the state file."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str, default: Any = None) -> Any:
        blob = self.values.get(key)
        return default if blob is None else msgpack.unpackb(blob)

    async def put(self, key: str, value: Any) -> None:
        self.values[key] = msgpack.packb(value)


def _write(directory: Path, name: str, first: int, n: int, *, order: int,
           features: int = 4) -> Path:
    """``n`` samples whose first feature is their number across the test (from ``first``)."""
    X = np.zeros((n, features), np.float32)
    X[:, 0] = np.arange(first, first + n)
    path = directory / name
    np.savez(path, X=X, y=np.arange(n, dtype=np.int64) % 3)
    os.utime(path, ns=(_T0 + order, _T0 + order))
    return path


def _numbers(part: Any) -> list[int]:
    return [int(v) for v in part.X[:, 0]]


@pytest.fixture
def store() -> DictStore:
    return DictStore()


@pytest.fixture
def stats() -> AgentStats:
    return AgentStats()


def _source(directory: Path, store: ValueStore, stats: AgentStats, clock: FakeClock, *,
            window: int = 10, holdout: float = 0.0, max_bytes: int = 10**6) -> DirectorySource:
    return DirectorySource(
        DataDirectory(directory), store=store, window=window, poll_s=POLL_S,
        max_file_bytes=max_bytes, holdout=holdout, salt=5, clock=clock, stats=stats,
        changed=Pulse(), offload=Offload(), logger=logging.getLogger("test.datastream"))


async def _polls(source: DirectorySource, n: int = 2) -> None:
    for _ in range(n):
        await source.poll()


async def test_files_arriving_over_time_are_read_on_the_clock_and_the_oldest_evicted(
    tmp_path: Path, store: DictStore, stats: AgentStats, fake_clock: FakeClock,
) -> None:
    _write(tmp_path, "b.npz", 0, 6, order=1)
    source = _source(tmp_path, store, stats, fake_clock)
    await source.load()  # first look: not stable yet
    assert len(source.window) == 0 and len(source.train) == 0
    async with _running(source):
        await _next_poll(fake_clock)
        assert _numbers(source.train) == list(range(6))
        _write(tmp_path, "a.npz", 6, 7, order=2)  # a later mtime wins over the name
        await _next_poll(fake_clock)
        assert len(source.window) == 6  # seen once: not yet read
        await _next_poll(fake_clock)
    assert _numbers(source.train) == list(range(3, 13))  # the oldest 3 evicted
    assert stats.data_files == 2 and stats.data_samples == 13
    assert source.train.y is not None and len(source.train.y) == 10


@contextlib.asynccontextmanager
async def _running(source: DirectorySource) -> AsyncIterator[None]:
    """``source.run()`` as a task for the block's duration."""
    task = asyncio.create_task(source.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _next_poll(clock: FakeClock) -> None:
    sleeper = await clock.sleeper(lambda s: s.duration == POLL_S)
    await clock.advance(sleeper.remaining)
    await clock.sleeper(lambda s: s.duration == POLL_S)  # the poll is done: it sleeps again


async def test_a_half_written_file_is_read_only_once_it_is_stable(
    tmp_path: Path, store: DictStore, stats: AgentStats, fake_clock: FakeClock,
) -> None:
    path = tmp_path / "s.csv"
    path.write_text("f1,f2,label\n1,2,0\n3,4")  # the writer is mid-line
    source = _source(tmp_path, store, stats, fake_clock)
    await source.load()
    with path.open("a") as handle:
        handle.write(",1\n")
    await source.poll()  # size changed since the first look: still waiting
    assert stats.data_files == 0 and not stats.data_refused
    await source.poll()
    assert stats.data_files == 1 and len(source.window) == 2
    (tmp_path / "t.csv.part").write_text("f1,f2,label\n")  # other names are never looked at
    await _polls(source)
    assert stats.data_files == 1 and not stats.data_refused


async def test_a_malformed_file_is_one_warning_and_a_count_and_the_rest_goes_on(
    tmp_path: Path, store: DictStore, stats: AgentStats, fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("f1,label\n1,0\nnot-a-number,1\n")
    os.utime(bad, ns=(_T0, _T0))
    _write(tmp_path, "good.npz", 0, 4, order=1)
    source = _source(tmp_path, store, stats, fake_clock)
    with caplog.at_level(logging.WARNING, logger="test.datastream"):
        await source.load()
        await _polls(source, 3)  # refused once, not retried
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "(malformed)" in lines[0] and str(bad) in lines[0]
    assert "line 3, column 1" in lines[0]  # load_local_data's own message
    assert stats.data_refused == {"malformed": 1}
    assert stats.data_files == 1 and len(source.window) == 4


async def test_a_file_with_another_feature_count_or_too_large_is_refused(
    tmp_path: Path, store: DictStore, stats: AgentStats, fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _write(tmp_path, "a.npz", 0, 4, order=1)
    _write(tmp_path, "b.npz", 4, 4, order=2, features=7)
    big = _write(tmp_path, "c.npz", 8, 400, order=3)
    source = _source(tmp_path, store, stats, fake_clock, max_bytes=big.stat().st_size - 1)
    with caplog.at_level(logging.WARNING, logger="test.datastream"):
        await source.load()
        await _polls(source, 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"data file refused (feature_mismatch): {tmp_path / 'b.npz'}: 7 features, "
        "the window has 4",
        f"data file refused (too_large): {big}: {big.stat().st_size} bytes, over the "
        f"{big.stat().st_size - 1}-byte limit",
    ]
    assert stats.data_refused == {"feature_mismatch": 1, "too_large": 1}
    assert _numbers(source.train) == [0, 1, 2, 3]


async def test_a_compressed_npz_is_measured_by_what_it_unpacks_to(
    tmp_path: Path, store: DictStore, stats: AgentStats, fake_clock: FakeClock,
) -> None:
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, X=np.zeros((5000, 4), np.float32), y=np.zeros(5000, np.int64))
    assert path.stat().st_size < 10_000
    source = _source(tmp_path, store, stats, fake_clock, max_bytes=50_000)
    await source.load()
    await source.poll()
    assert stats.data_refused == {"too_large": 1} and len(source.window) == 0


async def test_a_restart_rebuilds_the_window_without_ingesting_anything_twice(
    tmp_path: Path, store: DictStore, fake_clock: FakeClock,
) -> None:
    for i in range(4):
        _write(tmp_path, f"f{i}.npz", 4 * i, 4, order=i)
    first = _source(tmp_path, store, AgentStats(), fake_clock, holdout=0.3)
    await first.load()
    await first.poll()
    before = (_numbers(first.train), _numbers(first.holdout), first.window.indices.tolist())
    assert len(first.window) == 10
    assert LEDGER_KEY in store.values

    again = AgentStats()
    second = _source(tmp_path, store, again, fake_clock, holdout=0.3)
    await second.load()
    await _polls(second)
    assert again.data_files == 0  # nothing new
    assert (_numbers(second.train), _numbers(second.holdout),
            second.window.indices.tolist()) == before
    _write(tmp_path, "f4.npz", 16, 4, order=4)
    await _polls(second)
    assert again.data_files == 1
    assert second.window.indices.tolist() == list(range(10, 20))  # numbering went on


async def test_holdout_assignment_is_stable_as_the_window_slides(
    tmp_path: Path, store: DictStore, stats: AgentStats, fake_clock: FakeClock,
) -> None:
    source = _source(tmp_path, store, stats, fake_clock, window=30, holdout=0.25)
    await source.load()
    side: dict[int, bool] = {}
    for i in range(8):
        _write(tmp_path, f"f{i}.npz", 10 * i, 10, order=i)
        await _polls(source)
        for held, part in ((False, source.train), (True, source.holdout)):
            for n in _numbers(part):
                assert side.setdefault(n, held) is held
        assert len(source.train) + len(source.holdout) == min(30, 10 * (i + 1))
    assert stats.data_files == 8
    assert any(side.values()) and not all(side.values())


async def test_the_ledger_survives_in_the_agent_state_file(
    tmp_path: Path, fake_clock: FakeClock,
) -> None:
    data_dir = tmp_path / "incoming"
    data_dir.mkdir()
    for i in range(3):
        _write(data_dir, f"f{i}.npz", 4 * i, 4, order=i)
    for run in range(2):
        stats = AgentStats()
        async with LocalState(tmp_path / "agent.db", device_id="dev-1", fed="fed") as state:
            source = _source(data_dir, state, stats, fake_clock)
            await source.load()
            await source.poll()
        assert stats.data_files == (3 if run == 0 else 0)
        assert source.window.indices.tolist() == list(range(2, 12))


async def test_a_ledger_write_that_failed_is_made_at_the_next_poll(
    tmp_path: Path, stats: AgentStats, fake_clock: FakeClock,
) -> None:
    class FullOnce(DictStore):
        failed = False

        async def put(self, key: str, value: Any) -> None:
            if not self.failed:
                self.failed = True
                raise OSError(28, "No space left on device")
            await super().put(key, value)

    store = FullOnce()
    _write(tmp_path, "a.npz", 0, 4, order=1)
    source = _source(tmp_path, store, stats, fake_clock)
    await source.load()
    with pytest.raises(OSError):
        await source.poll()  # the data loop's supervisor logs it and runs the loop again
    assert LEDGER_KEY not in store.values and stats.data_files == 1
    await source.poll()
    assert LEDGER_KEY in store.values and stats.data_files == 1
