"""The orchestrator package's one exception root.

Every error the package raises on purpose derives from :class:`OrchestratorError`, so a caller
(the CLI, a supervisor) catches one type and prints its one-line message. Wire-level refusals
keep their own root, :class:`schemas.errors.FedmqError`: they are data about a message, not a
failure of the service.
"""

from __future__ import annotations

__all__ = ["OrchestratorError"]


class OrchestratorError(Exception):
    """A failure of the orchestrator; ``str(exc)`` is one readable line.

    ``device``, ``seq`` and ``reason`` (a :class:`schemas.errors.Reason` value) say what the
    failure concerns, where that is known, so logs and audit rows need not parse the text.
    """

    def __init__(self, message: str = "", *, device: str | None = None, seq: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.device = device
        self.seq = seq
        self.reason = reason
