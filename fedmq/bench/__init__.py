"""Every benchmark ``fedmq bench NAME`` runs (registered in ``fedmq.bench.cli``).

Each module exposes ``add_arguments(parser)`` and ``run(args) -> dict``; the dict is printed
as a table and, on the last line of stdout, as one JSON object. They live here, in the one
package that may import both sides, because they run real agents against a real orchestrator.
"""

from fedmq.errors import ToolError


class BenchError(ToolError, RuntimeError):
    """A benchmark could not run to completion."""
