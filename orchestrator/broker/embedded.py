"""The embedded broker: a supervised Mosquitto in ``data_dir/broker`` on a fixed loopback port.

Device credentials live in that directory's password file (``fedmq device add`` writes them,
possibly while no broker runs). ``MosquittoBroker`` rewrites the file at start with only the
accounts it knows, so the entries found before the start are merged back right after it, and
the broker reloads before anyone is told it is up. A broker left running by an orchestrator
that was killed (SIGKILL leaves children behind) is stopped first: it holds the port and the
persistence database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from orchestrator.broker import ORCHESTRATOR_USER, BrokerError, MosquittoBroker, read_pid_file
from orchestrator.config import Config

__all__ = ["embedded_broker", "stop_stale_broker"]

# room for the MQTT fixed header, topic and properties around the largest payload
_PACKET_MARGIN = 64 * 1024
_DEFAULT_PACKET = 8 * 1024 * 1024


@contextlib.asynccontextmanager
async def embedded_broker(config: Config) -> AsyncIterator[MosquittoBroker]:
    """Start (and on exit stop) the federation's own Mosquitto."""
    workdir = config.federation.broker_dir
    await asyncio.to_thread(stop_stale_broker, workdir)
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


def stop_stale_broker(workdir: Path, timeout_s: float = 5.0) -> bool:
    """Stop a Mosquitto still running from ``workdir``'s config; True if there was one."""
    pid_file = workdir / "mosquitto.pid"
    if not pid_file.exists():
        return False
    try:
        pid = read_pid_file(pid_file)
    except BrokerError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False  # no such process
    # only ever a mosquitto started on this very config: a recycled pid is left alone
    config = str(workdir / "mosquitto.conf").encode()
    if not any(arg.endswith(b"mosquitto") for arg in cmdline[:1]) or config not in cmdline:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # it saves its persistence database on SIGTERM
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    return True


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
