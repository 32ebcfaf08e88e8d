"""Benchmarks run by ``fedmq bench NAME`` (registered in ``orchestrator.cli.bench``).

Each module exposes ``add_arguments(parser)`` and ``run(args) -> dict``; the dict is printed
as a table and, on the last line of stdout, as one JSON object.
"""


class BenchError(RuntimeError):
    """A benchmark could not run to completion."""
