"""The edge agent's one exception root (wire-protocol refusals come from ``schemas.errors``).

Every error the package raises on purpose derives from :class:`AgentError`, so a caller (the
CLI, the simulator) catches one type and prints its one-line message. Where callers have long
caught a builtin, the builtin stays as a second base: bad data and contract violations are
still ``ValueError``s, an ONNX Runtime failure is still a ``RuntimeError``.
"""

from __future__ import annotations

import errno
import sqlite3

__all__ = [
    "AgentError",
    "ConfigError",
    "DataError",
    "ModelContractError",
    "ModelRunError",
    "NotConnectedError",
    "OversizedUpdateError",
    "RevokedError",
    "StateError",
    "storage_full",
]


class AgentError(Exception):
    """A failure of the agent; ``str(exc)`` is one readable line.

    ``device``, ``seq`` and ``reason`` (a short machine-readable word) say what the failure
    concerns, where that is known, so logs and callers need not parse the text.
    """

    def __init__(self, message: str = "", *, device: str | None = None, seq: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.seq = seq
        self.reason = reason


class StateError(AgentError):
    """The agent's state file cannot be opened, belongs to another device, or is corrupt."""


class NotConnectedError(AgentError):
    """A publish was attempted while the MQTT session is down (the caller retries later)."""


class ConfigError(AgentError, ValueError):
    """The agent was given an unusable configuration (bundle, option values, task options)."""


class DataError(AgentError, ValueError):
    """Local data that cannot be used: unreadable, malformed, or not what the model expects."""


class ModelContractError(AgentError, ValueError):
    """The graphs, or the parameters given for them, do not honour the model contract."""


class ModelRunError(AgentError, RuntimeError):
    """ONNX Runtime failed while running a graph that passed the contract checks."""


class OversizedUpdateError(AgentError):
    """A signed update is larger than one ``updates`` batch may be (``seq`` names it)."""


class RevokedError(AgentError):
    """The orchestrator revoked this device: it must not run again (``str(exc)`` is the line
    to show; see :mod:`edge_agent.tombstone`)."""


def storage_full(exc: BaseException) -> bool:
    """True for a full disk, however it surfaces (SQLite's "database or disk is full",
    or ENOSPC from the file system)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)
