"""Exceptions of the broker tooling: one base, one subclass for credential mistakes."""

from __future__ import annotations


class BrokerError(Exception):
    """The broker could not be configured, started, signalled or stopped."""


class CredentialError(BrokerError, ValueError):
    """A user name, password, password hash or password file is invalid."""
