"""``fedmq bench NAME [ARGS...]``: run one benchmark, print a table, then its JSON.

A benchmark is a module with ``add_arguments(parser)`` and ``run(args) -> dict``; adding one is
one entry in ``BENCHMARKS``. Modules are imported only when their benchmark runs. The very last
line of stdout is the result as one JSON object, for scripts and CI to parse.

``fedmq bench all [--quick]`` runs every benchmark in turn with its defaults (``make bench``),
prints each table, and ends with one JSON object keyed by benchmark name; a benchmark that
fails is recorded as ``{"error": ...}`` and the others still run (exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from fedmq.bench import BenchError

BENCHMARKS: dict[str, str] = {
    "agent": "fedmq.bench.agent",
    "ingest": "fedmq.bench.ingest",
    "wire": "fedmq.bench.wire",
    "async-vs-sync": "fedmq.bench.async_vs_sync",
    "fleet": "fedmq.bench.fleet",
    "flood": "fedmq.bench.flood",
    "secagg": "fedmq.bench.secagg",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fedmq bench",
        description="Run a benchmark: a table, then one JSON object on the last stdout line.",
        epilog="benchmarks: " + ", ".join(BENCHMARKS) + "; all runs every one (make bench)",
    )
    parser.add_argument("name", metavar="NAME",
                        help="one of: " + ", ".join(BENCHMARKS) + ", all")
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
    if name == "all":
        return _run_all(rest)
    module_path = BENCHMARKS.get(name)
    if module_path is None:
        print(
            f"fedmq bench: unknown benchmark {name!r} (available: {', '.join(BENCHMARKS)}, all)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(module_path)
    args = _parser(name, module).parse_args(rest)
    try:
        result: dict[str, Any] = module.run(args)
    except BenchError as exc:
        print(f"fedmq bench {name}: {exc}", file=sys.stderr)
        return 1
    _print_table(name, result)
    print(json.dumps(result), flush=True)
    return 0


def _parser(name: str, module: Any) -> argparse.ArgumentParser:
    doc = (module.__doc__ or "").strip().splitlines()
    sub = argparse.ArgumentParser(prog=f"fedmq bench {name}", description=doc[0] if doc else None)
    module.add_arguments(sub)
    return sub


# ``all --quick`` for benchmarks without a --quick of their own
_QUICK_ARGS: dict[str, list[str]] = {
    "agent": ["--steps", "20", "--warmup", "5"],
    "ingest": ["--batches", "5"],
    "flood": ["--lane", "updates", "--messages", "5000", "--window", "4"],
}


def _run_all(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="fedmq bench all",
        description="Run every benchmark in turn; the last stdout line is one JSON object "
                    "keyed by benchmark name.")
    parser.add_argument("--quick", action="store_true",
                        help="each benchmark's small smoke run (for tests)")
    parser.add_argument("--only", metavar="NAMES",
                        help="comma-separated subset, in this order: " + ", ".join(BENCHMARKS))
    opts = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if opts.only:
        wanted = [n.strip() for n in opts.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
        names = [n for n in names if n in wanted]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"fedmq bench all: running {name}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(BENCHMARKS[name])
            sub = _parser(name, module)
            args: list[str] = []
            if opts.quick:
                quick = any("--quick" in a.option_strings for a in sub._actions)
                args = ["--quick"] if quick else _QUICK_ARGS.get(name, [])
            result: dict[str, Any] = module.run(sub.parse_args(args))
        except (BenchError, ImportError) as exc:
            print(f"fedmq bench {name}: {exc}", file=sys.stderr, flush=True)
            results[name] = {"error": str(exc)}
            continue
        _print_table(name, result)
        results[name] = result
    print(json.dumps(results), flush=True)
    return 1 if any("error" in r for r in results.values()) else 0


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
