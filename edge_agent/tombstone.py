"""The tombstone: a file that says the orchestrator revoked this device, so it never runs again.

On a verified ``Control(revoke)`` the agent writes ``<device_id>.revoked`` beside its state
file (atomically: temporary file, fsync, rename, fsync of the directory) before it destroys
its key and outbox. Every later start looks for it first and refuses with one line::

    device dev-7 was revoked by the orchestrator at 2026-12-06T08:15:02Z: stolen

The file is one JSON object (``device_id``, ``fed``, ``revoked_ms``, ``reason``); one that
cannot be read still refuses the start, with what is known. Deleting it does not bring the
device back: its key is gone, and the orchestrator refuses it anyway.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import RevokedError

__all__ = ["RevokedError", "Tombstone", "tombstone_path"]

def tombstone_path(state_path: Path, device_id: str) -> Path:
    """Where the tombstone of ``device_id`` lives: beside its state file."""
    return state_path.parent / f"{device_id}.revoked"


@dataclass(frozen=True, slots=True)
class Tombstone:
    device_id: str
    fed: str
    revoked_ms: int
    reason: str

    @property
    def line(self) -> str:
        when = datetime.fromtimestamp(self.revoked_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"device {self.device_id} was revoked by the orchestrator at {when}: "
                f"{self.reason or 'no reason given'}")

    def error(self) -> RevokedError:
        return RevokedError(self.line, device=self.device_id, reason="revoked")

    def to_json(self) -> str:
        return json.dumps({"device_id": self.device_id, "fed": self.fed,
                           "revoked_ms": self.revoked_ms, "reason": self.reason},
                          sort_keys=True)

    def write(self, path: Path) -> None:
        """Write durably (the file is complete or absent, never half-written)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (self.to_json() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def read(cls, path: Path, device_id: str) -> Tombstone | None:
        """The tombstone at ``path``, None when there is none. A file that exists but cannot
        be parsed is still a tombstone (with an unknown time and reason)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            text = ""
        try:
            raw = json.loads(text)
            return cls(str(raw["device_id"]), str(raw.get("fed", "")), int(raw["revoked_ms"]),
                       str(raw.get("reason", "")))
        except (ValueError, TypeError, KeyError):
            mtime = int(path.stat().st_mtime * 1000) if path.exists() else 0
            return cls(device_id, "", mtime, f"(tombstone {path} unreadable)")
