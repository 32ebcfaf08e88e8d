"""``fedmq orchestrator run --config FILE``: run the orchestrator service until SIGINT/SIGTERM.

``fedmq orchestrator rotate-key --config FILE [--grace SECONDS]`` rotates the orchestrator's
own key (see :mod:`orchestrator.link.rotation`), beside a running service or while it is down;
the grace defaults to ``[federation] key_grace_s``. A second rotation is refused, one line,
until the first has retired the old key.

Prints one ``ready`` line on stdout once connected and subscribed. Every error is one line on
stderr and a non-zero exit status (2: bad usage or config, 1: failure at run time).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
import time

from orchestrator.broker import BrokerError
from orchestrator.cli._common import Parser as _Parser
from orchestrator.cli._common import one_line_errors
from orchestrator.config import Config, load_config
from orchestrator.convergence.evaluation import EvaluationError
from orchestrator.link.keys import KeyFileError
from orchestrator.link.rotation import request_rotation
from orchestrator.models.architecture import ArchitectureError
from orchestrator.service import Orchestrator, OrchestratorError
from orchestrator.store import Store, StoreError
from orchestrator.versions.publisher import PublishError
from schemas.signing import key_id

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
    rotate = commands.add_parser("rotate-key", help="rotate the orchestrator's own key")
    rotate.add_argument("--config", required=True, metavar="FILE")
    rotate.add_argument("--grace", type=float, default=None, metavar="SECONDS",
                        help="how long devices may still adopt the new key "
                             "(default: [federation] key_grace_s, 7 days)")
    return parser


async def _rotate(config: Config, grace_s: float) -> int:
    """Record the request; the running service (or its next start) announces it."""
    config.federation.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with Store.open(config.federation.store_path,
                          federation_id=config.federation.id) as store:
        rotation = await request_rotation(store, config.federation.key_path, grace_s=grace_s,
                                          actor=getpass.getuser(),
                                          now_ms=int(time.time() * 1000))
    print(f"{PROG}: key rotation requested: new key {key_id(bytes.fromhex(rotation.new_public))}"
          f" replaces {key_id(bytes.fromhex(rotation.old_public))}; the orchestrator announces "
          f"it within about a second (or when it next starts) and retires the old key "
          f"{grace_s:g} s later")
    return 0


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
    if args.command == "rotate-key":
        grace = config.federation.key_grace_s if args.grace is None else args.grace
        return asyncio.run(_rotate(config, grace))
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
