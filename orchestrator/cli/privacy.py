"""``fedmq privacy``: the federation's differential-privacy spend.

    fedmq privacy report (--config FILE | --db PATH) [--json]

Reads the store (the config's ``data_dir``, or the database file itself): the DP policy and
federation accountant the orchestrator saved, and each device's participations. Shows the
mode (where the noise comes from) and the sampling assumption the epsilon rests on, in words,
the federation's epsilon at its delta, then each device's participations, epsilon, budget and
whether it may still be selected. ``--json`` prints one JSON object instead (an unbounded
epsilon is null; ``mode``, ``sampling``, ``amplification`` and ``accounting`` say which
accounting gave the epsilon). Every mistake is one line on stderr and a non-zero exit
status: 2 for bad usage, 1 for failures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.cli._common import Parser as _Parser
from orchestrator.cli._common import one_line_errors
from orchestrator.config import load_config
from orchestrator.privacy import (
    DpPolicy,
    FederationAccountant,
    PrivacySummary,
    summarize,
)
from orchestrator.privacy.summary import DEVICE_WORDS, mode_words
from orchestrator.store import Store, StoreError
from orchestrator.store.state_keys import StateKey

PROG = "fedmq privacy"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Differential-privacy budgets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = commands.add_parser("report", help="the federation's epsilon and each device's")
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="orchestrator config (its data_dir)")
    source.add_argument("--db", metavar="PATH", help="the orchestrator's database file")
    report.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


async def _gather(path: Path) -> PrivacySummary:
    async with Store.open(path) as store:
        policy_state = await store.get_server_state(StateKey.PRIVACY_POLICY)
        accountant_state = await store.get_server_state(StateKey.ACCOUNTANT)
        records = await store.privacy_ledger()
        devices = await store.list_devices(role="device")
    policy = DpPolicy.from_bytes(policy_state) if policy_state is not None else None
    accountant = (FederationAccountant.from_state(accountant_state)
                  if accountant_state is not None else None)
    # the accountant composes with dp-accounting: seconds for PLD, off the event loop
    return await asyncio.to_thread(summarize, policy, accountant, records,
                                   [d.device_id for d in devices])


def _number(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return "inf" if x == float("inf") else f"{x:.{digits}f}"


def _print_human(summary: PrivacySummary) -> None:
    console = Console(highlight=False, soft_wrap=True)
    p = summary.policy
    if p is None:
        console.print("differential privacy: off (no DP policy saved in this store)")
        if summary.epsilon is None:
            return
    else:
        budget = "none" if p.epsilon_max is None else f"epsilon {p.epsilon_max:.2f}"
        console.print(f"differential privacy: on ({p.mode} noise, {p.accountant} accountant)")
        console.print(f"noise: {mode_words(p.mode)}")
        console.print(f"noise multiplier {p.noise_multiplier:g}, clip norm {p.clip_norm:g}, "
                      f"per-device budget {budget}")
    if summary.accounting is not None:
        console.print(f"accounting: {summary.accounting}")
    console.print(f"federation epsilon {_number(summary.epsilon)} at delta "
                  f"{summary.target_delta:g} after {summary.versions} version(s)")
    console.print(DEVICE_WORDS)
    table = Table("device", "participations", "epsilon", "budget", "budget left")
    for d in summary.devices:
        table.add_row(d.device_id, str(d.participations), _number(d.epsilon),
                      _number(d.budget, 2), "yes" if d.budget_left else "[bold]no[/bold]")
    console.print(table)


async def _report(args: argparse.Namespace) -> int:
    if args.db is not None:
        path = Path(args.db)
    else:
        path = load_config(args.config).federation.store_path
    # opening creates a missing database: a report must not
    if not await asyncio.to_thread(path.is_file):
        raise StoreError(f"no orchestrator database at {path}")
    summary = await _gather(path)
    if args.json:
        payload: dict[str, Any] = summary.to_dict()
        print(json.dumps(payload))
    else:
        _print_human(summary)
    return 0


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(_report(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
