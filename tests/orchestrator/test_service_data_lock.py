"""One ``fedmq orchestrator run`` per data_dir, with the embedded broker, as real processes: a
second one fails on the lock with one line and leaves the first's broker alone; the broker a
SIGKILLed orchestrator left behind is stopped by the next one; a pid file naming an unrelated
process is not acted on. Reading the store beside a running service still works. In one
process, a second ``Orchestrator`` on a data_dir in use is refused the same way."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.broker import pick_free_port, read_pid_file
from orchestrator.config import Config
from orchestrator.data_lock import LOCK_NAME, DataDirLock, DataDirLockedError
from orchestrator.service import Orchestrator
from tests.support.service_config import FED, MODEL
from tests.support.service_process import service, start_service, tail, wait_ready

pytestmark = pytest.mark.integration  # every test runs the service with its embedded broker


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of ours that is not a broker (as a recycled pid would be)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    model = "\n".join(f"{k} = {v!r}" if isinstance(v, int) else f'{k} = "{v}"'
                      for k, v in MODEL.items())
    path = tmp_path / "orchestrator.toml"
    path.write_text(f'[federation]\nid = "{FED}"\ndata_dir = "data"\n\n'
                    f"[broker]\nport = {pick_free_port()}\n\n[model]\n{model}\n")
    return path


def _broker_dir(config: Path) -> Path:
    return config.parent / "data" / "broker"


def _is_broker_of(pid: int, broker_dir: Path) -> bool:
    """``pid`` is a live mosquitto on ``broker_dir``'s config (a zombie's cmdline is empty)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (Path(os.fsdecode(argv[0])).name == "mosquitto"
            and os.fsencode(broker_dir / "mosquitto.conf") in argv)


@contextlib.contextmanager
def _reaped_if_left(pid: int, broker_dir: Path) -> Iterator[None]:
    """Never leave an orphaned broker behind a failing test."""
    try:
        yield
    finally:
        if _is_broker_of(pid, broker_dir):
            os.kill(pid, signal.SIGKILL)


async def test_a_second_orchestrator_fails_on_the_lock_and_spares_the_first(
    config: Path, tmp_path: Path,
) -> None:
    broker_dir = _broker_dir(config)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    async with service(config, first_log, clean_exit=True) as first:
        await wait_ready(first, first_log)
        broker_pid = read_pid_file(broker_dir / "mosquitto.pid")
        assert _is_broker_of(broker_pid, broker_dir)

        second = await start_service(config, second_log)
        assert second.stdout is not None
        try:
            async with asyncio.timeout(60):  # a bound, not a measurement
                assert await second.stdout.readline() == b"", tail(second_log)  # never ready
                assert await second.wait() == 1
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        data = config.parent / "data"
        assert second_log.read_text().splitlines() == [
            f"fedmq orchestrator: error: data_dir {data} is in use by another orchestrator "
            f"(pid {first.pid} holds {data / LOCK_NAME}); stop it first or use another "
            f"data_dir"]
        # the first's broker is untouched, and its store is still readable beside it
        assert read_pid_file(broker_dir / "mosquitto.pid") == broker_pid
        assert _is_broker_of(broker_pid, broker_dir)
        listing = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedmq.cli", "device", "list", "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await listing.communicate()
        assert listing.returncode == 0, err.decode()
        assert first.returncode is None, tail(first_log)
    # clean_exit: the first stopped on SIGTERM with status 0, and its broker with it
    assert not _is_broker_of(broker_pid, broker_dir)


async def test_the_broker_of_a_killed_orchestrator_is_stopped_by_the_next(
    config: Path, tmp_path: Path,
) -> None:
    broker_dir = _broker_dir(config)
    log = tmp_path / "orchestrator.log"
    async with service(config, log) as first:
        await wait_ready(first, log)
        left = read_pid_file(broker_dir / "mosquitto.pid")
        first.kill()  # SIGKILL: no shutdown path, the broker child is orphaned
        await first.wait()
    with _reaped_if_left(left, broker_dir):
        assert _is_broker_of(left, broker_dir)  # it outlived its orchestrator
        async with service(config, log, clean_exit=True) as second:
            await wait_ready(second, log)  # on the same port: the leftover let it go
            assert not _is_broker_of(left, broker_dir)
            now = read_pid_file(broker_dir / "mosquitto.pid")
            assert now != left and _is_broker_of(now, broker_dir)
    assert "stopping the broker" in log.read_text()


async def test_a_pid_file_naming_an_unrelated_process_is_left_alone(
    config: Path, tmp_path: Path, unrelated: subprocess.Popen[bytes],
) -> None:
    broker_dir = _broker_dir(config)
    broker_dir.mkdir(parents=True)
    (broker_dir / "mosquitto.pid").write_text(f"{unrelated.pid}\n")
    log = tmp_path / "orchestrator.log"
    async with service(config, log, clean_exit=True) as proc:
        await wait_ready(proc, log)
        # ready comes after the stale check, which waits for what it signals: a kill of the
        # process would show here
        assert unrelated.poll() is None
    assert f"names pid {unrelated.pid}, which is not our broker" in log.read_text()


async def test_in_one_process_a_second_service_is_refused_and_the_first_keeps_its_lock(
    orchestrator: Orchestrator, make_config: Callable[..., Config],
) -> None:
    data = orchestrator.config.federation.data_dir
    with pytest.raises(DataDirLockedError) as caught:
        async with Orchestrator(make_config(), store_synchronous="NORMAL"):
            pass
    assert caught.value.data_dir == data and caught.value.pid == os.getpid()
    # the refused one released nothing of the first's: a third is refused the same way
    with pytest.raises(DataDirLockedError):
        DataDirLock(data).acquire()
    async with asyncio.timeout(20):  # and the first still serves
        await orchestrator.wait_for_version(0, published=True)
