"""Exceptions of the broker tooling: one base, one subclass for credential mistakes."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class BrokerError(OrchestratorError):
    """The broker could not be configured, started, signalled or stopped."""


class CredentialError(BrokerError, ValueError):
    """A user name, password, password hash or password file is invalid."""
