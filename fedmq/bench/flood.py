"""Flood containment under load (``fedmq bench flood``).

A real Mosquitto, the service in its own process with the shipped ``[limits]`` defaults, and
``--agents`` honest agents training on digits in this process. For each lane (``updates``,
``status``, ``ops``) in turn: a window of ``--window`` seconds without a flood (the baseline),
then one of the same length in which one enrolled device, in its own process and with its own
valid credentials, publishes ``--messages`` junk messages on that lane as fast as it can.

Reported per lane and overall (the worst lane): ``audit_rows_added`` — audit rows written in
the flood window beyond those of the baseline window; ``store_growth_bytes`` — growth of the
store (pages in use, WAL included) in the flood window beyond the baseline's; ``rss_growth_mb``
— the service's peak resident memory in the flood window over its value before;
``honest_rate_ratio`` — versions made in the flood window over versions in the baseline
window; ``isolated`` — the flooder ended isolated in the store and cut off by the broker.
Targets: audit rows ≤ 100, store growth ≤ 1 MB, RSS growth ≤ 50 MB, ratio ≥ 0.5, isolated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from fedmq.bench import BenchError
from fedmq.bench._proc import STEP_S, child, expect_ready, in_workdir, stop, tail
from fedmq.bench._proc import service as service_process
from fedmq.simulate import Fleet, FleetSpec, provision_fleet, shard_data
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config, load_config
from schemas import Bundle

__all__ = ["add_arguments", "run"]

FED = "bench"
LANES = {"updates": "up/{dev}/updates", "status": "up/{dev}/status",
         "ops": "ops/request/{dev}"}
TARGETS = {"audit_rows_added": 100, "store_growth_bytes": 1_000_000, "rss_growth_mb": 50.0,
           "honest_rate_ratio": 0.5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lane", choices=(*LANES, "all"), default="all",
                        help="the lane to flood (all: each in turn)")
    parser.add_argument("--messages", type=int, default=30_000,
                        help="junk messages the flooder tries to send (30000)")
    parser.add_argument("--agents", type=int, default=5, help="honest agents (5)")
    parser.add_argument("--window", type=float, default=15.0,
                        help="seconds of each baseline and flood window (15)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it instead of a temporary one")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.agents < 1 or args.messages < 1 or args.window <= 0:
        raise BenchError("--agents and --messages must be >= 1 and --window > 0")
    return in_workdir(args.keep, "fedmq-bench-flood-", lambda workdir: _bench(args, workdir))


def _config_text(broker: MosquittoBroker) -> str:
    return f"""
[federation]
id = "{FED}"
data_dir = "data"
heartbeat_s = 2.0
[broker]
embedded = false
host = "{broker.host}"
port = {broker.port}
password = "{broker.orchestrator_password}"
password_file = "{broker.password_file}"
pid_file = "{broker.pid_file}"
[model]
kind = "mlp"
n_features = 64
n_classes = 10
hidden = [32]
[training]
epochs = 1
batch_size = 16
min_battery_pct = 0.0
[aggregation]
k = 2
staleness = "polynomial"
max_staleness = 1000
[ingest]
synchronous = "NORMAL"
"""


@dataclass
class _Lane:
    lane: str
    sent: int
    flood_s: float
    audit_rows_added: int
    store_growth_bytes: int
    rss_growth_mb: float
    versions_baseline: int
    versions_flood: int
    honest_rate_ratio: float
    isolated: bool


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    lanes = list(LANES) if args.lane == "all" else [args.lane]
    async with MosquittoBroker(work / "broker") as broker:
        config_path = work / "flood.toml"
        config_path.write_text(_config_text(broker))
        config = load_config(config_path)
        spec = FleetSpec(devices=args.agents, dataset="digits", split="iid",
                         battery_fraction=0.0, id_prefix="honest")
        data = shard_data(spec)
        bundles = await provision_fleet(config, [*spec.device_ids(),
                                                 *(f"flood-{lane}" for lane in lanes)])
        await broker.reload()
        honest, flooders = bundles[:args.agents], bundles[args.agents:]
        log = work / "orchestrator.log"
        async with service_process(config_path, log) as service:
            await expect_ready(service, log)
            assert service.pid is not None
            async with Fleet(honest, data.shards, work / "agents", spec,
                             agent_config=AgentConfig(heartbeat_s=2.0, holdout=0.0)):
                await _wait_version(config, 3)
                results = [await _phase(args, work, config, broker, service.pid, lane, bundle)
                           for lane, bundle in zip(lanes, flooders, strict=True)]
            await stop(service, log)
    return _report(args, results)


async def _phase(args: argparse.Namespace, work: Path, config: Config,
                 broker: MosquittoBroker, pid: int, lane: str, flooder: Bundle) -> _Lane:
    before = await asyncio.to_thread(_snapshot, config)
    await asyncio.sleep(args.window)
    middle = await asyncio.to_thread(_snapshot, config)
    rss_before = _rss_mb(pid)
    topic = f"fl/{FED}/" + LANES[lane].format(dev=flooder.device_id)
    log = work / f"flood-{lane}.log"
    async with child(log, "-m", "fedmq.bench._flooder", broker.host, str(broker.port),
                     flooder.mqtt_username, flooder.mqtt_password, topic,
                     str(args.messages)) as proc:
        await _line(proc, log)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        peak = await _watch_rss(pid, args.window)
        after = await asyncio.to_thread(_snapshot, config)
        report = await _line(proc, log)
    status = await asyncio.to_thread(_status, config, flooder.device_id)
    base_versions, flood_versions = middle.version - before.version, after.version - middle.version
    return _Lane(
        lane=lane, sent=int(report["sent"]), flood_s=float(report["seconds"]),
        audit_rows_added=(after.audit - middle.audit) - (middle.audit - before.audit),
        store_growth_bytes=(after.bytes - middle.bytes) - max(0, middle.bytes - before.bytes),
        rss_growth_mb=round(max(0.0, peak - rss_before), 1),
        versions_baseline=base_versions, versions_flood=flood_versions,
        honest_rate_ratio=round(flood_versions / max(base_versions, 1), 3),
        isolated=status == "isolated" and bool(report["disconnected"]))


@dataclass(frozen=True)
class _Snapshot:
    version: int
    audit: int
    bytes: int


def _snapshot(config: Config) -> _Snapshot:
    """The store as another reader sees it (read-only, beside the running service). Its size
    is the pages in use, WAL included: file sizes jump with checkpoints."""
    path = config.federation.store_path
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        version = conn.execute("SELECT coalesce(max(version), 0) FROM versions").fetchone()[0]
        audit = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    return _Snapshot(int(version), int(audit), int(pages - free) * int(size))


def _status(config: Config, device: str) -> str:
    path = config.federation.store_path
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
        row = conn.execute("SELECT status FROM devices WHERE device_id = ?",
                           (device,)).fetchone()
    return str(row[0]) if row else "missing"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for the service (pid {pid})")


async def _watch_rss(pid: int, seconds: float) -> float:
    """The service's largest resident size, sampled every 0.1 s for ``seconds``."""
    loop = asyncio.get_running_loop()
    end, peak = loop.time() + seconds, _rss_mb(pid)
    while loop.time() < end:
        await asyncio.sleep(0.1)
        peak = max(peak, _rss_mb(pid))
    return peak


async def _wait_version(config: Config, version: int) -> None:
    async with asyncio.timeout(STEP_S):
        while (await asyncio.to_thread(_snapshot, config)).version < version:  # noqa: ASYNC110
            await asyncio.sleep(0.2)


async def _line(proc: asyncio.subprocess.Process, log: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(STEP_S):
        line = await proc.stdout.readline()
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise BenchError(f"the flooder failed: {tail(log)}")
    return obj


def _report(args: argparse.Namespace, lanes: Sequence[_Lane]) -> dict[str, Any]:
    worst = {
        "audit_rows_added": max(r.audit_rows_added for r in lanes),
        "store_growth_bytes": max(r.store_growth_bytes for r in lanes),
        "rss_growth_mb": max(r.rss_growth_mb for r in lanes),
        "honest_rate_ratio": min(r.honest_rate_ratio for r in lanes),
        "isolated": all(r.isolated for r in lanes),
    }
    met = {key: (worst[key] >= target if key == "honest_rate_ratio" else worst[key] <= target)
           for key, target in TARGETS.items()}
    met["isolated"] = bool(worst["isolated"])
    return {"bench": "flood", "agents": args.agents, "messages": args.messages,
            "window_s": args.window, **worst,
            "lanes": {r.lane: {k: v for k, v in asdict(r).items() if k != "lane"}
                      for r in lanes},
            "targets": {**TARGETS, "isolated": True}, "targets_met": met}
