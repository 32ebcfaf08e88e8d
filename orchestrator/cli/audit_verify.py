"""``fedmq audit verify``: check the audit log's hash chain in the config's store (read-only).

    fedmq audit verify --config FILE [--head HASH]

Prints one line and exits 0 when the chain is intact (rows checked, rows from before the chain,
the head row and its hash: record the hash off this machine, e.g. in a ticket or a log
collector), or one line naming the first broken row and what is wrong and exits 1. ``--head``
is a head recorded earlier: the chain must still contain it, which catches a history that was
truncated or rewritten wholesale (chain recomputed) since. A missing or unreadable store is one
line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import re

from orchestrator.cli._common import Parser, UsageError, one_line_errors
from orchestrator.config import load_config
from orchestrator.store import ChainReport, verify_audit

PROG = "fedmq audit verify"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Verify the audit log's hash chain (read-only).")
    parser.add_argument("--config", required=True, metavar="FILE", help="orchestrator config")
    parser.add_argument("--head", metavar="HASH",
                        help="a head hash recorded earlier, which the chain must still contain")
    return parser


def summary(report: ChainReport) -> str:
    """The one line ``verify`` prints."""
    before = f" ({report.unchained} older rows predate the chain)" if report.unchained else ""
    if not report.ok:
        where = f"row {report.row_id}" if report.row_id is not None else "chain"
        return (f"BROKEN: {where}: {report.problem}; {report.checked} rows verified before "
                f"it{before}")
    if report.head is None:
        return f"OK: no chained rows yet{before}"
    return (f"OK: {report.checked} rows chained{before}; head row {report.head_id} "
            f"hash {report.head}")


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.head is not None and not _HEX64.fullmatch(args.head):
        raise UsageError("--head must be 64 lowercase hex characters (a head hash)")
    config = load_config(args.config)
    report = asyncio.run(verify_audit(config.federation.store_path, config.federation.id,
                                      expect_head=args.head))
    print(f"{PROG}: {summary(report)}")
    return 0 if report.ok else 1
