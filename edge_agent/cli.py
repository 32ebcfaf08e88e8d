"""``fedmq agent run --bundle FILE --data PATH``: run one edge agent until SIGINT/SIGTERM.

``--data`` is one ``.npz``/``.csv`` file, or a directory such files arrive in; then the agent
trains on the newest ``--window N`` samples (:mod:`edge_agent.datastream`).

A user mistake (missing or malformed bundle, unreadable data, a state file of another device)
is one readable line on stderr and exit status 2. The agent itself logs to stderr. Exit status
1 means the orchestrator revoked the device or rejected its enrollment. A revoked device
leaves a tombstone beside its state file; every later run refuses at once with exit status 1
and one line ("device X was revoked by the orchestrator at T: reason").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

from schemas import Bundle, FedmqError

from .agent import Agent
from .config import AgentConfig
from .data import LocalData, load_local_data
from .datastream import DataDirectory
from .errors import AgentError, ConfigError, RevokedError
from .probes import DeviceProbe, SimulatedProbe, SysfsProbe
from .tls import tls_context
from .tombstone import Tombstone, tombstone_path

EXIT_OK, EXIT_ENDED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmq agent", description="Run an edge agent.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent until interrupted")
    run.add_argument("--bundle", required=True, type=Path, help="enrollment bundle (JSON)")
    run.add_argument("--data", required=True, type=Path,
                     help="local data: a .npz or .csv file, or a directory that such files "
                          "keep arriving in (trained on as a sliding window)")
    run.add_argument("--window", type=int, default=5000, metavar="N",
                     help="with a data directory: train on the newest N samples (default 5000)")
    run.add_argument("--data-poll", type=float, default=2.0, metavar="SECONDS",
                     help="with a data directory: look for new files this often (default 2)")
    run.add_argument("--state", type=Path,
                     help="state file (default: <device_id>.agent.db next to the bundle)")
    run.add_argument("--holdout", type=float, default=0.2,
                     help="share of the data kept for evaluation (default 0.2)")
    run.add_argument("--label-column", help="CSV label column (name or index)")
    run.add_argument("--unlabeled", action="store_true",
                     help="the data has no labels (autoencoder models)")
    run.add_argument("--heartbeat", type=float, help="heartbeat seconds (overrides enrollment)")
    run.add_argument("--key-rotation", type=float, metavar="SECONDS",
                     help="rotate the device key this often (default: only when asked)")
    run.add_argument("--ack-timeout", type=float, default=10.0,
                     help="seconds before an unacked update is sent again (default 10)")
    run.add_argument("--device-class", default="", help="free-form class reported in updates")
    run.add_argument("--probe", choices=("sysfs", "simulated"), default="sysfs",
                     help="device-state source (default sysfs)")
    run.add_argument("--seed", type=int, help="seed for shuffling and the holdout split")
    run.add_argument("--log-level", default="INFO",
                     choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="default INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    try:
        args = _parser().parse_args(args_list)
    except SystemExit as exc:  # argparse has printed its message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        bundle, data, config, state_path, tls = _prepare(args)
    except RevokedError as exc:  # a tombstone: revoked earlier, never runs again
        print(f"fedmq agent: {exc}", file=sys.stderr)
        return EXIT_ENDED
    except (AgentError, FedmqError, ValueError, OSError) as exc:
        print(f"fedmq agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    probe: DeviceProbe = SimulatedProbe() if args.probe == "simulated" else SysfsProbe()
    try:
        finished = asyncio.run(_run(bundle, data, state_path, config, probe, tls))
    except RevokedError as exc:  # a tombstone: revoked earlier, never runs again
        print(f"fedmq agent: {exc}", file=sys.stderr)
        return EXIT_ENDED
    except AgentError as exc:
        print(f"fedmq agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    if finished is not None:
        stone = Tombstone.read(tombstone_path(state_path, bundle.device_id), bundle.device_id)
        line = stone.line if finished == "revoked" and stone is not None else \
            f"stopped: {finished}"
        print(f"fedmq agent: {line}", file=sys.stderr)
        return EXIT_ENDED
    return EXIT_OK


def _check_fit(bundle: Bundle, data: LocalData, path: Path) -> None:
    """The data against the model the bundle names, before anything connects (a mismatch
    found after enrollment would fail every task instead)."""
    if bundle.n_features and data.n_features != bundle.n_features:
        raise ConfigError(f"data {path}: {data.n_features} features per sample, but the "
                          f"federation's model takes {bundle.n_features}")
    if not bundle.n_classes:
        return
    if data.y is None:
        raise ConfigError(f"data {path}: the federation's model needs labels "
                          f"(0..{bundle.n_classes - 1}), and --unlabeled reads none")
    outside = (data.y < 0) | (data.y >= bundle.n_classes)
    if outside.any():
        raise ConfigError(f"data {path}: {int(outside.sum())} label(s) outside "
                          f"0..{bundle.n_classes - 1}, the federation's classes "
                          f"(e.g. {int(data.y[outside][0])})")


def _prepare(
    args: argparse.Namespace,
) -> tuple[Bundle, LocalData | DataDirectory, AgentConfig, Path, ssl.SSLContext | None]:
    try:
        text = args.bundle.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read bundle {args.bundle}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    try:
        bundle = Bundle.from_json(text)
    except FedmqError as exc:
        raise ConfigError(f"bad bundle {args.bundle}: {exc}") from None
    if bundle.role != "device":
        raise ConfigError(f"bad bundle {args.bundle}: it is an {bundle.role} bundle")
    state_path = args.state or args.bundle.with_name(f"{bundle.device_id}.agent.db")
    stone = Tombstone.read(tombstone_path(state_path, bundle.device_id), bundle.device_id)
    if stone is not None:
        raise stone.error()
    label: str | int | None = args.label_column
    if isinstance(label, str) and label.lstrip("-").isdigit():
        label = int(label)
    data: LocalData | DataDirectory
    if args.data.is_dir():
        data = DataDirectory(args.data.resolve(), label, supervised=not args.unlabeled)
    else:
        data = load_local_data(args.data, label_column=label, supervised=not args.unlabeled)
        _check_fit(bundle, data, args.data)
    config = AgentConfig(holdout=args.holdout, heartbeat_s=args.heartbeat,
                         ack_timeout_s=args.ack_timeout, device_class=args.device_class,
                         seed=args.seed, exit_on_revoke=True,
                         key_rotation_s=args.key_rotation, window=args.window,
                         data_poll_s=args.data_poll)
    try:
        tls = tls_context(bundle, state_path)
    except ConfigError as exc:
        raise ConfigError(f"bad bundle {args.bundle}: {exc}") from None
    return bundle, data, config, state_path, tls


async def _run(
    bundle: Bundle,
    data: LocalData | DataDirectory,
    state_path: Path,
    config: AgentConfig,
    probe: DeviceProbe,
    tls: ssl.SSLContext | None,
) -> str | None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Agent(bundle, data, state_path, config=config, probe=probe,
                         tls_context=tls) as agent:
            return await agent.run_until(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
