"""Finding and signalling a running Mosquitto (stdlib only)."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from .errors import BrokerError

INSTALL_HINT = "install it with: apt-get install -y mosquitto"
# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
_FALLBACK_LOCATIONS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def find_mosquitto(
    *, path: str | None = None, fallbacks: Sequence[str] = _FALLBACK_LOCATIONS
) -> str:
    """Path of the ``mosquitto`` binary, from ``path`` (default: $PATH) or ``fallbacks``."""
    found = shutil.which("mosquitto", path=path)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError(f"mosquitto not found on PATH or in /usr/sbin; {INSTALL_HINT}")


def read_pid_file(path: str | os.PathLike[str]) -> int:
    """The pid stored in a Mosquitto ``pid_file``."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise BrokerError(f"pid file {path} does not exist (is the broker running?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"cannot read pid file {path}: {exc}") from None
    if not text.isdigit() or int(text) <= 0:
        raise BrokerError(f"pid file {path} does not hold a process id: {text[:20]!r}")
    return int(text)


def reload_broker(pid: int) -> None:
    """Send SIGHUP: Mosquitto re-reads its password file and ACL without dropping sessions.

    Connected clients whose credentials are no longer valid are disconnected by the reload.
    The signal is asynchronous; ``MosquittoBroker.reload`` also waits for it to take effect.
    """
    if pid <= 0:
        raise BrokerError(f"invalid pid {pid}")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise BrokerError(f"no process with pid {pid} (is the broker running?)") from None
    except PermissionError:
        raise BrokerError(f"not allowed to signal pid {pid} (run as the broker's user)") from None
