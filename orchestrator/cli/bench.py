"""``fedmq bench NAME [ARGS...]``: run one benchmark, print a table, then its JSON.

A benchmark is a module with ``add_arguments(parser)`` and ``run(args) -> dict``; adding one is
one entry in ``BENCHMARKS``. Modules are imported only when their benchmark runs. The very last
line of stdout is the result as one JSON object, for scripts and CI to parse.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from orchestrator.bench import BenchError

BENCHMARKS: dict[str, str] = {
    "agent": "orchestrator.bench.agent",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fedmq bench",
        description="Run a benchmark: a table, then one JSON object on the last stdout line.",
        epilog="benchmarks: " + ", ".join(BENCHMARKS),
    )
    parser.add_argument("name", metavar="NAME", help="one of: " + ", ".join(BENCHMARKS))
    parser.add_argument(
        "args", metavar="ARGS", nargs=argparse.REMAINDER, help="options of that benchmark"
    )
    if not argv:
        parser.print_help()
        return 0
    if argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_path = BENCHMARKS.get(name)
    if module_path is None:
        print(
            f"fedmq bench: unknown benchmark {name!r} (available: {', '.join(BENCHMARKS)})",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(module_path)
    doc = (module.__doc__ or "").strip().splitlines()
    sub = argparse.ArgumentParser(prog=f"fedmq bench {name}", description=doc[0] if doc else None)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        result: dict[str, Any] = module.run(args)
    except BenchError as exc:
        print(f"fedmq bench {name}: {exc}", file=sys.stderr)
        return 1
    _print_table(name, result)
    print(json.dumps(result), flush=True)
    return 0


def _rows(result: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in result.items():
        if isinstance(value, dict):
            yield from _rows(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", str(value)


def _print_table(name: str, result: dict[str, Any]) -> None:
    rows = list(_rows(result))
    try:
        from rich.console import Console
        from rich.table import Table
    except ModuleNotFoundError:
        width = max((len(k) for k, _ in rows), default=0)
        print(f"bench {name}")
        for key, value in rows:
            print(f"  {key:<{width}}  {value}")
        return
    table = Table(title=f"bench {name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    Console(file=sys.stdout).print(table)
    sys.stdout.flush()
