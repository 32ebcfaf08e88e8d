"""``stop_stale_broker``: only under the data_dir lock, only our own mosquitto on this data_dir's
config; a pid file naming anything else (a recycled pid, another data_dir's broker) is left
alone. The service-level cases (a killed orchestrator's broker, a second orchestrator) are in
tests/orchestrator/test_service_data_lock.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.broker import BrokerError, MosquittoBroker
from orchestrator.broker.embedded import stop_stale_broker
from orchestrator.data_lock import DataDirLock
from tests.support.waiting import until


@pytest.fixture
def lock(tmp_path: Path) -> Iterator[DataDirLock]:
    with DataDirLock(tmp_path / "data") as held:
        yield held


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours that is not a broker (as a recycled pid would be)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def _pid_file(lock: DataDirLock, text: str) -> Path:
    workdir = lock.data_dir / "broker"
    workdir.mkdir(exist_ok=True)
    (workdir / "mosquitto.pid").write_text(text)
    return workdir


def test_refused_without_the_data_dir_lock(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path / "data")
    with pytest.raises(BrokerError, match="does not hold the lock"):
        stop_stale_broker(tmp_path / "data" / "broker", lock)
    with lock, pytest.raises(BrokerError, match="does not hold the lock"):
        stop_stale_broker(tmp_path / "elsewhere" / "broker", lock)  # not under our data_dir


@pytest.mark.parametrize("text", [None, "", "not a pid\n", "0\n", "4194999\n"])
def test_no_pid_file_or_no_such_process_is_nothing_to_stop(
    lock: DataDirLock, text: str | None,
) -> None:
    workdir = lock.data_dir / "broker"
    if text is not None:
        workdir = _pid_file(lock, text)
    assert stop_stale_broker(workdir, lock) is False


def test_a_pid_file_naming_an_unrelated_live_process_leaves_it_alone(
    lock: DataDirLock, unrelated: subprocess.Popen[bytes],
) -> None:
    workdir = _pid_file(lock, f"{unrelated.pid}\n")
    assert stop_stale_broker(workdir, lock) is False
    assert unrelated.poll() is None  # the call returned: a signal would have been sent by now


@pytest.mark.integration  # a real Mosquitto on another data_dir
async def test_another_data_dirs_broker_is_left_alone(
    tmp_path: Path, lock: DataDirLock,
) -> None:
    async with MosquittoBroker(tmp_path / "other" / "broker") as other:
        assert other.pid is not None
        workdir = _pid_file(lock, f"{other.pid}\n")
        assert stop_stale_broker(workdir, lock) is False
        assert other.running
        await other.reload()  # and it still answers signals as a live broker


@pytest.mark.integration  # a real Mosquitto left in this data_dir
async def test_a_leftover_broker_of_this_data_dir_is_stopped(lock: DataDirLock) -> None:
    stale = MosquittoBroker(lock.data_dir / "broker")
    await stale.start()
    try:
        assert stop_stale_broker(stale.workdir, lock) is True
        await until(lambda: not stale.running)  # reaped by its parent, this test
    finally:
        await stale.stop()
