"""``fedmq federation status``: the federation at a glance, over the broker only.

    fedmq federation status --bundle OPERATOR_BUNDLE [--json]

Asks the orchestrator (a signed ``federation.status`` request): the current and published
model version, buffer fill against K, ingest rates and counts, outstanding tasks, devices
online, the last evaluations (server-side and federated) and the stopping rules' state.
``--json`` prints the orchestrator's answer as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from orchestrator.cli._operator import (
    Parser,
    add_operator_options,
    number,
    open_client,
    run_command,
    utc,
)

PROG = "fedmq federation"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Federation status (over MQTT).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="version, buffer, ingest, evaluations, "
                                 "stopping rules")
    add_operator_options(status)
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return parser


def render(fed: Mapping[str, Any]) -> Group:
    """The human view of a ``federation.status`` answer."""
    buffer = fed["buffer"]
    ingest = fed["ingest"]
    updates = ingest["updates"]
    devices = fed["devices"]
    stopping = fed["stopping"]
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    facts.add_row("federation", Text(str(fed["federation"]), "bold"))
    facts.add_row("mode", str(fed["mode"]))
    facts.add_row("version", f"{fed['version']} (published {number(fed['published_version'])})")
    facts.add_row("buffer", f"{buffer['fill']}/{buffer['capacity']}")
    rates = ingest["rate_per_s"]
    facts.add_row("ingest", f"{number(rates.get('accepted'))} accepted/s, "
                            f"{number(rates.get('received'))} received/s")
    rejected = ", ".join(f"{k} {v}" for k, v in updates["rejected_by_reason"].items() if v)
    facts.add_row("updates", f"{updates['accepted']} accepted, {updates['rejected']} rejected"
                             f"{f' ({rejected})' if rejected else ''}, "
                             f"{updates['duplicates']} duplicates")
    facts.add_row("tasks out", str(fed["outstanding_tasks"]))
    facts.add_row("devices", f"{devices['online']}/{devices['devices']} online, outbox backlog "
                             f"{devices['outbox_backlog']}")
    if stopping["stopped"]:
        state = Text(f"stopped: {stopping['reason']}", "yellow")
    elif stopping["enabled"]:
        rules = ", ".join(f"{k}={v:g}" for k, v in stopping["rules"].items()
                          if v is not None and k != "min_delta")
        state = Text(f"running ({rules}; best {number(stopping['best_metric'])} at "
                     f"v{number(stopping['best_version'])})")
    else:
        state = Text("running (no stopping rule)")
    facts.add_row("stopping", state)
    if fed.get("privacy_epsilon") is not None:
        facts.add_row("privacy", f"epsilon {number(fed['privacy_epsilon'])}")
    evals = Table(title="last versions", title_justify="left", box=None, header_style="bold")
    for column in ("VERSION", "CREATED (UTC)", "UPDATES", "SERVER METRIC", "SERVER LOSS",
                   "FEDERATED METRIC", "DEVICES"):
        evals.add_column(column, no_wrap=True)
    for e in fed["last_evaluations"]:
        server = e["server"] or {}
        federated = e["federated"] or {}
        evals.add_row(str(e["version"]), utc(e["created_ms"]), number(e["updates"]),
                      number(server.get("metric")), number(server.get("loss")),
                      number(federated.get("metric")), number(federated.get("devices")))
    return Group(facts, Text(""), evals)


async def _status(args: argparse.Namespace) -> int:
    async with open_client(args) as ops:
        fed = await ops.request("federation.status")
    if args.json:
        print(json.dumps(fed))
    else:
        Console(width=160).print(render(fed))
    return 0


def main(argv: list[str]) -> int:
    return run_command(PROG, _parser(), argv, _status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
