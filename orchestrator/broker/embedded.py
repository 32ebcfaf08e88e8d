"""The embedded broker: a supervised Mosquitto in ``data_dir/broker`` on a fixed loopback port.

Device credentials live in that directory's password file (``fedmq device add`` writes them,
possibly while no broker runs). ``MosquittoBroker`` rewrites the file at start with only the
accounts it knows, so the entries found before the start are merged back right after it, and
the broker reloads before anyone is told it is up. A broker left running by an orchestrator
that was killed (SIGKILL leaves children behind) is stopped first: it holds the port and the
persistence database. That happens only under the data_dir lock (so its orchestrator is dead:
a live one would hold the lock) and only to a process that really is our mosquitto on this
data_dir's config (see :func:`stop_stale_broker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import select
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from orchestrator.broker import ORCHESTRATOR_USER, BrokerError, MosquittoBroker, read_pid_file
from orchestrator.config import Config
from orchestrator.data_lock import DataDirLock

__all__ = ["embedded_broker", "stop_stale_broker"]

# room for the MQTT fixed header, topic and properties around the largest payload
_PACKET_MARGIN = 64 * 1024
_DEFAULT_PACKET = 8 * 1024 * 1024

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def embedded_broker(config: Config, lock: DataDirLock) -> AsyncIterator[MosquittoBroker]:
    """Start (and on exit stop) the federation's own Mosquitto; ``lock`` is this process's
    held lock on the data_dir (a leftover broker is stopped only under it)."""
    workdir = config.federation.broker_dir
    await asyncio.to_thread(stop_stale_broker, workdir, lock)
    saved = await asyncio.to_thread(_entries, workdir / "passwd")
    broker = MosquittoBroker(
        workdir, port=config.broker.port,
        max_packet_size=max(_DEFAULT_PACKET, config.broker.max_message_bytes + _PACKET_MARGIN),
    )
    async with broker:
        if saved:
            await asyncio.to_thread(_merge_entries, broker.password_file, saved)
            await broker.reload()
        yield broker


def stop_stale_broker(workdir: Path, lock: DataDirLock, *, timeout_s: float = 5.0) -> bool:
    """Stop the Mosquitto that a dead orchestrator of ``lock``'s data_dir left running from
    ``workdir``; True if there was one.

    Only with ``lock`` held, so no live orchestrator owns that broker; only the process that
    ``workdir/mosquitto.pid`` names; and only if it is, by its ``/proc`` entry, a mosquitto of
    our user running on ``workdir/mosquitto.conf`` (a recycled pid or someone else's broker is
    left alone, and the port then says why our broker cannot start). The process is pinned
    with a pidfd before it is checked, so the signal cannot reach a process that took the pid
    after the check. SIGTERM first (the broker saves its persistence database), SIGKILL if it
    is still there after ``timeout_s``.
    """
    if not lock.held or not workdir.is_relative_to(lock.data_dir):
        raise BrokerError(f"refusing to stop a broker in {workdir}: this process does not "
                          f"hold the lock on its data_dir")
    pid = _recorded_pid(workdir / "mosquitto.pid")
    if pid is None:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False  # gone already
    except OSError as exc:  # no pidfds here: no safe way to signal it
        log.warning("not stopping the broker pid %d left in %s: %s", pid, workdir, exc)
        return False
    try:
        if not _is_our_broker(pid, workdir / "mosquitto.conf"):
            log.warning("%s names pid %d, which is not our broker on this data_dir; "
                        "left alone", workdir / "mosquitto.pid", pid)
            return False
        log.warning("stopping the broker (pid %d) that a dead orchestrator left in %s",
                    pid, workdir)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                break  # exited between the two
            if _exited(pidfd, timeout_s):
                break
        return True
    finally:
        os.close(pidfd)


def _recorded_pid(pid_file: Path) -> int | None:
    try:
        return read_pid_file(pid_file)
    except BrokerError:
        return None  # missing or garbled: nothing we could safely stop


def _is_our_broker(pid: int, config: Path) -> bool:
    """``pid`` is a live mosquitto of our user started as ``mosquitto -c CONFIG`` with CONFIG
    being ``config`` (a zombie's command line is empty)."""
    proc = Path(f"/proc/{pid}")
    try:
        if proc.stat().st_uid != os.getuid():
            return False
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not argv or Path(os.fsdecode(argv[0])).name != "mosquitto":
        return False
    for flag, value in itertools.pairwise(argv):
        if flag in (b"-c", b"--config-file"):
            given = Path(os.fsdecode(value))
            try:
                return os.path.samefile(given if given.is_absolute() else proc / "cwd" / given,
                                        config)
            except OSError:
                return False
    return False


def _exited(pidfd: int, timeout_s: float) -> bool:
    """Wait until the process behind ``pidfd`` has exited (the pidfd turns readable)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000))))


def _entries(path: Path) -> dict[str, str]:
    """``{user: raw line}`` of a password file (missing file: empty)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        user, sep, _ = line.partition(":")
        if sep and user and not line.lstrip().startswith("#") and user != ORCHESTRATOR_USER:
            out[user] = line
    return out


def _merge_entries(path: Path, saved: dict[str, str]) -> None:
    """Add the saved entries of users the file no longer has (atomically, mode 0600)."""
    present = _entries(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    extra = [line for user, line in saved.items() if user not in present]
    if not extra:
        return
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join(line + "\n" for line in extra)
    fd, tmp = tempfile.mkstemp(prefix=".passwd.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
