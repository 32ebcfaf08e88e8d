"""One orchestrator per ``data_dir``: an exclusive OS lock on ``data_dir/orchestrator.lock``.

    with DataDirLock(config.federation.data_dir) as lock:   # DataDirLockedError if taken
        ...                                                  # key, store, broker are ours

The lock is ``flock(LOCK_EX | LOCK_NB)`` on a file that also holds the holder's pid (for the
error message only: the lock, not the pid, decides). The kernel drops it when the holder's
descriptor closes, so a process that was killed (SIGKILL included) leaves no lock behind, and
the descriptor is not inherited by children (the embedded Mosquitto outlives a killed
orchestrator without keeping its lock). The file itself is never removed: unlinking a lock
file lets two processes lock two different inodes.

Standard library only. Offline CLI commands do not take it: SQLite's WAL lets them read (and
make their small, designed-for-concurrency writes) beside a running service.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from orchestrator.errors import OrchestratorError

__all__ = ["LOCK_NAME", "DataDirLock", "DataDirLockedError"]

LOCK_NAME = "orchestrator.lock"


class DataDirLockedError(OrchestratorError):
    """Another live process (``pid``, None if unknown) holds the ``data_dir`` lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process whose pid is not recorded yet"
        super().__init__(f"data_dir {data_dir} is in use by another orchestrator ({holder} "
                         f"holds {data_dir / LOCK_NAME}); stop it first or use another data_dir")
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """The exclusive lock on one ``data_dir`` (created if missing, mode 0700).

    ``acquire`` (or ``with``) takes it at once or raises :class:`DataDirLockedError`;
    ``release`` gives it up (idempotent). One instance holds at most one lock; a second
    instance on the same directory, in this process or another, is refused while it is held.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise OrchestratorError(f"the lock on {self.data_dir} is already held")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirLockedError(self.data_dir, pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no pid of a process that no longer holds it
        finally:
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None
