"""``fedmq audit``: the orchestrator's audit log, over the broker only.

    fedmq audit --bundle OPERATOR_BUNDLE [--event E ...] [--device D] [--since WHEN]
                [--limit N] [--json]

Asks the orchestrator (a signed ``audit.list`` request) for the newest ``--limit`` (default 50,
at most 1000) events matching every filter: ``--event`` (repeatable: enrolled, approved,
revoked, isolated, rejected, quarantined, operator_command, stopped...), ``--device`` and
``--since`` (``30s``, ``15m``, ``2h``, ``7d`` ago, or an ISO-8601 time such as
``2026-11-22T08:00`` read as UTC unless it names a zone). ``--json`` prints one JSON array,
newest first.

    fedmq audit verify --config FILE [--head HASH]

checks the audit log's hash chain in the store itself (see :mod:`orchestrator.cli.audit_verify`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.cli import audit_verify
from orchestrator.cli._operator import (
    Parser,
    UsageError,
    add_operator_options,
    open_client,
    run_command,
    utc,
)
from orchestrator.ops.commands import MAX_AUDIT_LIMIT

PROG = "fedmq audit"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now_s: float) -> int:
    """``--since`` as epoch milliseconds (see the module docstring for the forms)."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return int((now_s - float(match[1]) * _UNITS[match[2]]) * 1000)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: give a duration (30s, 15m, 2h, 7d) or an "
                         "ISO-8601 time (2026-11-22T08:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="List audit events (over MQTT).")
    add_operator_options(parser)
    parser.add_argument("--event", action="append", metavar="E",
                        help="only this event (repeat for several)")
    parser.add_argument("--device", metavar="D", help="only events about this device")
    parser.add_argument("--since", metavar="WHEN", help="only events since WHEN")
    parser.add_argument("--limit", type=int, default=50, metavar="N",
                        help=f"the newest N events (1-{MAX_AUDIT_LIMIT}, default 50)")
    parser.add_argument("--json", action="store_true", help="one JSON array on stdout")
    return parser


def _detail(detail: dict[str, Any]) -> str:
    text = json.dumps(detail, sort_keys=True, separators=(",", ":")) if detail else ""
    return text if len(text) <= 80 else text[:77] + "..."


async def _audit(args: argparse.Namespace) -> int:
    if not 0 < args.limit <= MAX_AUDIT_LIMIT:
        raise UsageError(f"--limit must be in 1..{MAX_AUDIT_LIMIT}, got {args.limit}")
    query: dict[str, Any] = {"limit": args.limit}
    if args.event:
        query["event"] = args.event
    if args.device:
        query["device"] = args.device
    if args.since:
        query["since_ms"] = parse_since(args.since, now_s=time.time())
    async with open_client(args) as ops:
        events = await ops.request("audit.list", query)
    if args.json:
        print(json.dumps(events))
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "TIME (UTC)", "EVENT", "ACTOR", "DEVICE", "REASON", "DETAIL"):
        table.add_column(column, no_wrap=column != "DETAIL")
    for e in events:
        table.add_row(str(e["id"]), utc(e["ts_ms"]), e["event"], e["actor"], e["device"] or "-",
                      e["reason"] or "-", _detail(e["detail"]))
    Console(width=160).print(table)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["verify"]:
        return audit_verify.main(argv[1:])
    return run_command(PROG, _parser(), argv, _audit)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
