"""The edge agent's own exception tree (wire-protocol errors come from ``schemas.errors``)."""

from __future__ import annotations

import errno
import sqlite3


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class StateError(AgentError):
    """The agent's state file cannot be opened, belongs to another device, or is corrupt."""


class NotConnectedError(AgentError):
    """A publish was attempted while the MQTT session is down (the caller retries later)."""


class ConfigError(AgentError):
    """The agent was given an unusable configuration (bundle, data, option values)."""


def storage_full(exc: BaseException) -> bool:
    """True for a full disk, however it surfaces (SQLite's "database or disk is full",
    or ENOSPC from the file system)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)
