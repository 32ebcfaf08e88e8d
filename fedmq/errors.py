"""The ``fedmq`` glue package's one exception root."""

from __future__ import annotations

__all__ = ["ToolError"]


class ToolError(Exception):
    """The simulator, the demo or a benchmark could not run; ``str(exc)`` is one line."""
