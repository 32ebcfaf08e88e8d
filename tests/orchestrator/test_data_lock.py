"""The data_dir lock: exclusive across instances and processes, its holder named in the error,
never left behind by a dead holder, never inherited by a child (such as the embedded broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.data_lock import LOCK_NAME, DataDirLock, DataDirLockedError
from orchestrator.errors import OrchestratorError

# a process that takes the lock, says so, and holds it until its stdin closes or it is killed
_HOLDER = """
import sys
from pathlib import Path
from orchestrator.data_lock import DataDirLock
with DataDirLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def _holder(data_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(data_dir)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_the_lock_is_exclusive_and_records_the_holders_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DataDirLock(data) as first:
        assert first.held
        assert (data / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(DataDirLockedError) as caught:
            DataDirLock(data).acquire()
        assert caught.value.pid == os.getpid() and caught.value.data_dir == data
        message = str(caught.value)
        assert "\n" not in message and str(data) in message and f"pid {os.getpid()}" in message
        assert isinstance(caught.value, OrchestratorError)
        with pytest.raises(OrchestratorError, match="already held"):
            first.acquire()
    assert not first.held
    assert (data / LOCK_NAME).read_text() == ""  # no pid of a process that let go
    with DataDirLock(data):  # free again
        pass
    first.release()  # idempotent


def test_another_process_holding_the_lock_is_named(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(DataDirLockedError) as caught:
            DataDirLock(tmp_path).acquire()
        assert caught.value.pid == proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait() == 0
        assert proc.stdout is not None
        proc.stdout.close()
    with DataDirLock(tmp_path):  # released at its exit
        pass


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        assert pipe is not None
        pipe.close()
    assert (tmp_path / LOCK_NAME).read_text() == f"{proc.pid}\n"  # its pid is still written
    with DataDirLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_a_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    lock = DataDirLock(tmp_path)
    lock.acquire()
    child = subprocess.Popen(["sleep", "600"], close_fds=False)  # even when fds are kept
    try:
        lock.release()
        assert child.poll() is None
        with DataDirLock(tmp_path):  # the living child holds nothing
            pass
    finally:
        child.kill()
        child.wait()


def test_the_directory_is_created_private(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    with DataDirLock(data):
        assert data.stat().st_mode & 0o777 == 0o700
        assert (data / LOCK_NAME).stat().st_mode & 0o777 == 0o600
