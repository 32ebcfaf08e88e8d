"""``fedmq orchestrator run --config FILE``: run the orchestrator service until SIGINT/SIGTERM.

Prints one ``ready`` line on stdout once connected and subscribed. Every error is one line on
stderr and a non-zero exit status (2: bad usage or config, 1: failure at run time).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from orchestrator.broker import BrokerError
from orchestrator.cli._common import Parser as _Parser
from orchestrator.cli._common import one_line_errors
from orchestrator.config import Config, load_config
from orchestrator.convergence.evaluation import EvaluationError
from orchestrator.link.keys import KeyFileError
from orchestrator.models.architecture import ArchitectureError
from orchestrator.service import Orchestrator, OrchestratorError
from orchestrator.store import StoreError
from orchestrator.versions.publisher import PublishError

PROG = "fedmq orchestrator"
_RUNTIME_ERRORS = (OrchestratorError, StoreError, BrokerError, KeyFileError, ArchitectureError,
                   EvaluationError, PublishError, OSError)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run the fedmq orchestrator service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the service until SIGINT or SIGTERM")
    run.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"], help="(info)")
    commands.add_parser("check", help="validate a configuration and exit").add_argument(
        "--config", required=True, metavar="FILE")
    return parser


async def _serve(config: Config) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.set)
    try:
        async with Orchestrator(config, shutdown=shutdown) as orch:
            broker = config.broker
            where = "embedded" if broker.embedded else f"{broker.host}:{broker.port}"
            print(f"{PROG}: ready: federation {config.federation.id!r}, version "
                  f"{orch.version}, broker {where}", flush=True)
            await orch.wait_closed()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    config = load_config(args.config)
    if args.command == "check":
        print(f"{PROG}: {args.config}: ok (federation {config.federation.id!r})")
        return 0
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config))
    except Exception as exc:
        cause = _first(exc)
        if not isinstance(cause, _RUNTIME_ERRORS):
            raise  # a bug: keep the traceback
        print(f"{PROG}: error: {' '.join(str(cause).split()) or type(cause).__name__}",
              file=sys.stderr)
        return 1
    return 0


def _first(exc: BaseException) -> BaseException:
    """The first leaf of nested exception groups (the service's TaskGroup makes them)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
