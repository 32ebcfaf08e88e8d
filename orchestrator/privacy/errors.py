"""The privacy package's exceptions."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError

__all__ = ["PrivacyError", "PrivacyStateError"]


class PrivacyError(OrchestratorError, ValueError):
    """A differential-privacy setting or request is invalid (the message names the field)."""


class PrivacyStateError(PrivacyError):
    """A saved privacy state (policy, accountant) is unreadable or inconsistent."""
