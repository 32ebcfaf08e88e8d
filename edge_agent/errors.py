"""The edge agent's own exception tree (wire-protocol errors come from ``schemas.errors``)."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class StateError(AgentError):
    """The agent's state file cannot be opened, belongs to another device, or is corrupt."""


class NotConnectedError(AgentError):
    """A publish was attempted while the MQTT session is down (the caller retries later)."""


class ConfigError(AgentError):
    """The agent was given an unusable configuration (bundle, data, option values)."""
