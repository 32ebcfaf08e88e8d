"""``fedmq report``: plots and a markdown summary of a federation, from its store.

    fedmq report -o DIR (--config FILE | --db PATH)

Writes ``accuracy.png``, ``loss.png``, ``staleness.png``, ``participation.png``,
``updates_per_minute.png`` and ``summary.md`` into DIR (created if needed) and prints their
paths, one per line. The store is only read; a running orchestrator may keep writing to it.
With ``--config`` the store is the config's ``data_dir/orchestrator.db`` and the federation id
and metric direction come from the config. Every mistake is one line on stderr and a non-zero
exit status: 2 for bad usage or config, 1 for failures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from orchestrator.cli._common import Parser as _Parser
from orchestrator.cli._common import one_line_errors
from orchestrator.config import load_config
from orchestrator.report import write_report

PROG = "fedmq report"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Write plots and a markdown summary of a "
                     "federation from its store.")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder for the PNGs and summary.md (created if needed)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="the orchestrator's config file")
    source.add_argument("--db", metavar="PATH", help="the orchestrator's store file")
    return parser


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    federation: str | None = None
    higher_is_better: bool | None = None
    if args.config is not None:
        config = load_config(args.config)
        db = config.federation.store_path
        federation = config.federation.id
        higher_is_better = config.stopping.higher_is_better
    else:
        db = Path(args.db)
    result = asyncio.run(write_report(db, args.output, federation=federation,
                                      higher_is_better=higher_is_better))
    for path in result.files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
