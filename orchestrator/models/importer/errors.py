"""The importer's one exception type."""

from __future__ import annotations

from orchestrator.errors import OrchestratorError

__all__ = ["ModelImportError"]


class ModelImportError(OrchestratorError):
    """The ONNX model cannot be compiled into training graphs; ``str(exc)`` is one line."""
