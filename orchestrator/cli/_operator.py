"""What the operator commands (``fedmq fleet``, ``federation``, ``audit``) share: the
``--bundle``/``--timeout`` options, one-line errors and exit codes, and value formatting.

Exit codes: 0 done, 1 a failure (unreachable broker, refused or unanswered request),
2 bad usage. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from orchestrator.cli._common import Parser, UsageError, one_line_errors
from orchestrator.ops.client import OperatorClient, OpsClientError

__all__ = [
    "BUNDLE_ENV",
    "Parser",
    "UsageError",
    "add_operator_options",
    "ago",
    "number",
    "open_client",
    "run_command",
    "utc",
]

BUNDLE_ENV = "FEDMQ_OPERATOR_BUNDLE"


def add_operator_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", metavar="FILE", default=os.environ.get(BUNDLE_ENV),
                        help=f"the operator's enrollment bundle (default ${BUNDLE_ENV})")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for the broker and the orchestrator")


def open_client(args: argparse.Namespace) -> OperatorClient:
    return OperatorClient.open(args.bundle, timeout_s=args.timeout)


def run_command(prog: str, parser: argparse.ArgumentParser, argv: list[str],
                command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> int:
    """Parse ``argv`` and run ``command`` with one-line errors and the exit codes above."""

    @one_line_errors(prog)
    def main(argv: list[str]) -> int:
        args = parser.parse_args(argv)
        if args.bundle is None:
            raise UsageError(f"--bundle is required (or set ${BUNDLE_ENV})")
        if not args.timeout > 0:
            raise UsageError(f"--timeout must be > 0, got {args.timeout:g}")
        try:
            return asyncio.run(command(args))
        except OpsClientError as exc:
            print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return main(argv)


def utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(ms: int | None, now_ms: int) -> str:
    """``12s ago``, ``5m ago``, ``3h ago``, ``2d ago`` (or ``never``)."""
    if ms is None:
        return "never"
    seconds = max(0, now_ms - ms) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)
