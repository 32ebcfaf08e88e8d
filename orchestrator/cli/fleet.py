"""``fedmq fleet``: the fleet as field engineers see it, over the broker only.

    fedmq fleet status --bundle OPERATOR_BUNDLE [--offline] [--stale] [--class C]
                       [--sort FIELD] [--desc] [--json]
    fedmq fleet watch  --bundle OPERATOR_BUNDLE [same filters] [--count N] [--json]

``status`` asks the orchestrator (a signed ``fleet.status`` request) and prints one row per
device: class, online/offline, last seen, battery/charging, thermal state, model version and
staleness, outbox length, updates accepted/rejected, quarantines, privacy spend. ``--json``
prints ``{"ts_ms", "federation", "version", "totals", "devices": [...]}`` with the filtered,
sorted rows (fields: :data:`~orchestrator.fleet_summary.DEVICE_FIELDS`). ``watch`` redraws the
table from the retained fleet summary each time the orchestrator refreshes it, until Ctrl-C
(or ``--count`` summaries; with ``--json``, one JSON object per line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.cli._operator import (
    Parser,
    UsageError,
    add_operator_options,
    ago,
    number,
    open_client,
    run_command,
)
from orchestrator.ops.fleet_summary import SORT_FIELDS, select_rows

PROG = "fedmq fleet"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Fleet status for field engineers (over MQTT).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="one table of the devices")
    watch = commands.add_parser("watch", help="the table, refreshed live until Ctrl-C")
    for cmd in (status, watch):
        add_operator_options(cmd)
        cmd.add_argument("--offline", action="store_true", help="only devices not online")
        cmd.add_argument("--stale", action="store_true",
                         help="only devices whose model is behind (or unknown)")
        cmd.add_argument("--class", dest="device_class", metavar="C",
                         help="only devices of this class")
        cmd.add_argument("--sort", default="device_id", metavar="FIELD",
                         help=f"sort by one of: {', '.join(SORT_FIELDS)}")
        cmd.add_argument("--desc", action="store_true", help="sort in descending order")
        cmd.add_argument("--json", action="store_true", help="JSON for scripts")
    watch.add_argument("--count", type=int, metavar="N",
                       help="stop after N refreshes (default: until Ctrl-C)")
    return parser


def _check(args: argparse.Namespace) -> None:
    """Option mistakes, found before anything is sent."""
    if args.sort not in SORT_FIELDS:
        raise UsageError(f"--sort {args.sort!r}: choose one of {', '.join(SORT_FIELDS)}")
    if getattr(args, "count", None) is not None and args.count <= 0:
        raise UsageError(f"--count must be > 0, got {args.count}")


def _select(fleet: Mapping[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The fleet document with its rows filtered and sorted as the options say."""
    rows = select_rows(fleet.get("devices", []), offline=args.offline, stale=args.stale,
                       device_class=args.device_class, sort=args.sort,
                       descending=args.desc)
    return {"ts_ms": fleet.get("ts_ms"), "federation": fleet.get("federation"),
            "version": fleet.get("version"), "totals": fleet.get("totals"), "devices": rows}


def render(fleet: Mapping[str, Any]) -> Group:
    """The human view: a heading line and the device table."""
    now = int(fleet.get("ts_ms") or 0)
    totals = fleet.get("totals") or {}
    heading = Text.assemble(
        ("federation ", "dim"), (str(fleet.get("federation")), "bold"),
        ("  version ", "dim"), (str(fleet.get("version")), "bold"),
        ("  online ", "dim"), (f"{totals.get('online', 0)}/{totals.get('devices', 0)}", "bold"),
        ("  outbox backlog ", "dim"), (str(totals.get("outbox_backlog", 0)), "bold"),
        ("  anomalies ", "dim"), (str(totals.get("anomalies", 0)), "bold"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column, justify in (("DEVICE", "left"), ("CLASS", "left"), ("ONLINE", "left"),
                            ("LAST SEEN", "right"), ("BATTERY", "right"),
                            ("THERMAL", "left"), ("MODEL", "right"), ("OUTBOX", "right"),
                            ("ACC/REJ", "right"), ("EPS", "right"), ("ANOMALIES", "right"),
                            ("STANDING", "left")):
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in fleet.get("devices", []):
        battery = "-" if r["battery_pct"] is None else f"{r['battery_pct']:.0f}%"
        if r["charging"]:
            battery += "+"
        model = "-" if r["model_version"] is None else f"v{r['model_version']}"
        if r["staleness"]:
            model += f" (-{r['staleness']})"
        standing = r["status"]
        if r["quarantined"]:
            standing += f", {r['quarantined']} quarantined"
        table.add_row(
            r["device_id"], r["class"] or "-",
            Text("online", "green") if r["online"] else Text("offline", "red"),
            ago(r["last_seen_ms"], now), battery, r["thermal"] or "-", model,
            str(r["outbox_len"]), f"{r['accepted']}/{r['rejected']}",
            number(r["privacy_epsilon"]), _anomalies(r),
            Text(standing, "red" if r["status"] != "active" else ""))
    return Group(heading, table)


def _anomalies(row: Mapping[str, Any]) -> Text:
    """``flagged/scored`` (red when any is flagged), or ``-`` when nothing was scored."""
    scored, flagged = row.get("scored", 0), row.get("anomalies", 0)
    if not scored:
        return Text("-")
    return Text(f"{flagged}/{scored}", "red" if flagged else "")


async def _status(args: argparse.Namespace) -> int:
    _check(args)
    async with open_client(args) as ops:
        fleet = await ops.request("fleet.status")
    view = _select(fleet, args)
    if args.json:
        print(json.dumps(view))
    else:
        Console(width=160).print(render(view))
    return 0


async def _watch(args: argparse.Namespace) -> int:
    _check(args)
    seen = 0
    async with open_client(args) as ops:
        # the first (retained) summary may take one refresh interval: wait a little longer
        updates = ops.watch_fleet(timeout_s=max(args.timeout, 30.0))
        async with contextlib.aclosing(updates):
            with contextlib.ExitStack() as stack:
                live: Live | None = None
                if not args.json:
                    live = stack.enter_context(Live(console=Console(width=160),
                                                    auto_refresh=False))
                async for summary in updates:
                    view = _select({"ts_ms": summary.ts_ms,
                                    "federation": summary.federation.get("federation"),
                                    "version": summary.federation.get("version"),
                                    "totals": summary.federation.get("devices"),
                                    "devices": summary.devices}, args)
                    if live is None:
                        print(json.dumps(view), flush=True)
                    else:
                        live.update(render(view), refresh=True)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break
    return 0


def main(argv: list[str]) -> int:
    parser = _parser()
    commands = {"status": _status, "watch": _watch}

    async def dispatch(args: argparse.Namespace) -> int:
        return await commands[args.command](args)

    return run_command(PROG, parser, argv, dispatch)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
