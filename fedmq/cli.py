"""The ``fedmq`` console script: a thin dispatcher over command groups.

Each group lives with the package that owns it and is imported only when used, so
``fedmq agent ...`` works on a device that has none of the server extras installed, and
``edge_agent`` and ``orchestrator`` never import each other.
Each group module exposes ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

GROUPS: dict[str, tuple[str, str]] = {
    "agent": ("edge_agent.cli", "run an edge agent on a device"),
    "broker": ("orchestrator.cli.broker", "manage broker credentials and reloads"),
    "orchestrator": ("orchestrator.cli.service", "run the orchestrator service"),
    "device": ("orchestrator.cli.device", "enroll, approve and revoke devices"),
    "model": ("orchestrator.cli.model", "list, show, roll back and export model versions"),
    "fleet": ("orchestrator.cli.fleet", "fleet status for field engineers"),
    "federation": ("orchestrator.cli.federation", "federation status"),
    "privacy": ("orchestrator.cli.privacy", "differential-privacy budgets"),
    "audit": ("orchestrator.cli.audit", "list audit events; verify their hash chain"),
    "report": ("orchestrator.cli.report", "write plots and a summary"),
    "simulate": ("fedmq.simulate_cli", "run a simulated fleet of real agents"),
    "demo": ("fedmq.demo", "run the end-to-end demo"),
    "bench": ("fedmq.bench.cli", "run benchmarks"),
}


def _usage() -> str:
    lines = ["usage: fedmq COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in GROUPS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    group = GROUPS.get(args[0])
    if group is None:
        print(f"fedmq: unknown command {args[0]!r} (try 'fedmq --help')", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(group[0])
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("fedmq", "schemas", "edge_agent", "orchestrator"):
            print(f"fedmq {args[0]}: not available in this installation", file=sys.stderr)
        else:  # e.g. a device without the server extras asking for a server command
            print(f"fedmq {args[0]}: missing dependency {exc.name!r} "
                  "(install 'fedmq[server]' for server commands)", file=sys.stderr)
        return 2
    rc: int = module.main(args[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main())
