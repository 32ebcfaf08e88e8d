"""``fedmq simulate``: run a simulated fleet of real agents against a running orchestrator.

    fedmq simulate --config orchestrator.toml [--devices 20] [--dataset digits]
                   [--split dirichlet --alpha 0.5] [--step-ms 50 --step-sigma 1.0]
                   [--offline-fraction 0.2] [--time-scale 60] [--duration 300]

Devices are provisioned on first use (like ``fedmq device add``); their bundles and state
files stay in ``--workdir`` so a second run continues the same fleet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from edge_agent.config import AgentConfig
from fedmq.simulate import Fleet, FleetSpec, provision_fleet, shard_data
from orchestrator.config import Config, ConfigError, load_config
from orchestrator.convergence.datasets import DatasetError
from schemas import Bundle, ValidationError

PROG = "fedmq simulate"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Run N real edge agents with simulated devices.")
    p.add_argument("--config", required=True, help="the orchestrator's config (TOML)")
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--dataset", default="digits",
                   help="digits, wine, breast_cancer, or an .npz with X and y")
    p.add_argument("--split", choices=["iid", "dirichlet"], default="dirichlet")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-ms", type=float, default=0.0,
                   help="median simulated ms per training step (0: native speed)")
    p.add_argument("--step-sigma", type=float, default=0.0, help="lognormal sigma of step time")
    p.add_argument("--offline-fraction", type=float, default=0.0,
                   help="share of devices whose link drops for long stretches")
    p.add_argument("--battery-fraction", type=float, default=0.5)
    p.add_argument("--time-scale", type=float, default=60.0,
                   help="simulated seconds per wall-clock second")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many wall-clock seconds (default: until Ctrl-C)")
    p.add_argument("--workdir", default=None,
                   help="bundles and agent state (default: DATA_DIR/../simulated-fleet)")
    p.add_argument("--prefix", default="sim", help="device id prefix")
    return p


async def _bundles(config: Config, spec: FleetSpec, workdir: Path) -> list[Bundle]:
    """Reuse bundles from an earlier run; provision the devices that have none."""
    ids = spec.device_ids()
    paths = {i: workdir / f"{i}.bundle.json" for i in ids}
    missing = [i for i in ids if not paths[i].exists()]
    for bundle in await provision_fleet(config, missing):
        paths[bundle.device_id].write_text(bundle.to_json())
        paths[bundle.device_id].chmod(0o600)
    return [Bundle.from_json(paths[i].read_text()) for i in ids]


async def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    spec = FleetSpec(devices=args.devices, dataset=args.dataset, split=args.split,
                     alpha=args.alpha, seed=args.seed, step_ms_median=args.step_ms,
                     step_sigma=args.step_sigma, offline_fraction=args.offline_fraction,
                     battery_fraction=args.battery_fraction, time_scale=args.time_scale,
                     id_prefix=args.prefix)
    workdir = Path(args.workdir) if args.workdir else \
        config.federation.data_dir.parent / "simulated-fleet"
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = await asyncio.to_thread(shard_data, spec)
    bundles = await _bundles(config, spec, workdir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    async with Fleet(bundles, data.shards, workdir / "agents", spec,
                     agent_config=AgentConfig()) as fleet:
        print(f"{PROG}: {len(fleet.agents)} agents running (Ctrl-C to stop)", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=5.0)
            built = sum(a.stats.updates_built for a in fleet.agents)
            versions = {a.model_version for a in fleet.agents}
            print(f"  online {fleet.online():4d}/{len(fleet.agents)}  updates built {built:6d}"
                  f"  outbox {fleet.outbox_total():5d}  model versions held "
                  f"{sorted(v for v in versions if v is not None)[-3:]}", flush=True)
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (ConfigError, DatasetError, ValidationError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
