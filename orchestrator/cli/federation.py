"""``fedmq federation status|resume``: the federation at a glance, and lifting a stop, over
the broker only.

    fedmq federation status --bundle OPERATOR_BUNDLE [--json]
    fedmq federation resume --bundle OPERATOR_BUNDLE [--reason TEXT]
    fedmq federation resume --config FILE [--reason TEXT]

Asks the orchestrator (a signed ``federation.status`` request): the current and published
model version, buffer fill against K, ingest rates and counts, outstanding tasks, devices
online, the last evaluations (server-side and federated) and the stopping rules' state.
``--json`` prints the orchestrator's answer as one JSON object. ``resume`` (a signed
``federation.resume`` request, audited ``resumed``) lifts a stop: the stopping rules start
over from the current version, agents are told and pick up work again; a federation that is
not stopped is one line and exit status 1. On the orchestrator's box, ``resume --config``
records the request in the store instead (audited ``resume_requested``, actor
``cli:{login}``): the running service lifts the stop within a second, or at its next start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from orchestrator.cli._common import cli_actor, one_line_errors
from orchestrator.cli._operator import (
    Parser,
    add_operator_options,
    number,
    open_client,
    run_command,
    utc,
)
from orchestrator.config import load_config
from orchestrator.convergence.resume import request_resume
from orchestrator.store import Store, StoreError

PROG = "fedmq federation"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Federation status and resume (over MQTT).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="version, buffer, ingest, evaluations, "
                                 "stopping rules")
    add_operator_options(status)
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    resume = commands.add_parser("resume", help="lift a stop: agents pick up work again")
    add_operator_options(resume)
    resume.add_argument("--reason", default="", help="recorded in the audit log")
    resume.add_argument("--config", metavar="FILE",
                        help="on the orchestrator's box: request it through the store")
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


async def _resume(args: argparse.Namespace) -> int:
    async with open_client(args) as ops:
        lifted = await ops.request("federation.resume", {"reason": args.reason})
    print(f"{PROG}: resumed at version {lifted['version']} (it had stopped: "
          f"{lifted['stopped_for']})", file=sys.stderr)
    return 0


async def _run(args: argparse.Namespace) -> int:
    return await (_resume(args) if args.command == "resume" else _status(args))


async def _resume_offline(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = config.federation.store_path
    if not await asyncio.to_thread(path.is_file):
        raise StoreError(f"no orchestrator database at {path} (has the orchestrator run?)")
    async with Store.open(path, federation_id=config.federation.id) as store:
        why = await request_resume(store, actor=cli_actor(), reason=args.reason,
                                   now_ms=int(time.time() * 1000))
    print(f"{PROG}: resume requested (it had stopped: {why}); the orchestrator lifts the "
          "stop within a second, or at its next start", file=sys.stderr)
    return 0


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "resume" and args.config is not None:
        return asyncio.run(_resume_offline(args))
    return run_command(PROG, _parser(), argv, _run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
