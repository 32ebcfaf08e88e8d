"""Many connected devices on one orchestrator: ``fedmq bench fleet``.

The orchestrator runs as its own process (``fedmq orchestrator run`` with its embedded
Mosquitto), so its CPU can be read from ``/proc``. Devices are provisioned on the fast path
(rows in the store and one rewrite of the broker password file, instead of ``fedmq device
add`` per device), then:

- N lightweight devices, spread over a few load-generator processes, each a raw MQTT session
  that enrolls with the real signed ``Enroll`` message and heartbeats a signed ``Status``
  every 10 s (see :mod:`fedmq.bench._fleet_worker`);
- a few real edge agents (the full ``edge_agent`` code) that train on digits and deliver their
  updates through the same broker.

Over the hold window (a minute by default) it measures the orchestrator's CPU (utime+stime
of its process, the broker not included), heartbeats per second, and how long an
operator-style fleet status query takes (a read of the store's device table, as ``fedmq fleet
status`` is not built yet). After the window the agents drain their outboxes, the orchestrator
stops, and every update they built is looked up by (device, seq) in the orchestrator's ledger
and in their outboxes: ``updates_lost`` counts those found in neither. Targets:
``connected == devices`` (5000 by default), ``updates_lost == 0``,
``orchestrator_cpu_pct < 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import AgentConfig
from fedmq.bench import BenchError
from fedmq.simulate import Fleet, FleetData, FleetSpec, shard_data
from orchestrator.broker import PasswordFile, generate_password, pick_free_port
from orchestrator.config import Config, load_config
from orchestrator.devices.registry import bump_generation
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import AuditEvent, Store
from schemas import Bundle

DEVICES_TARGET = 5000
CPU_TARGET_PCT = 50.0
KEEP_UP = 0.9
"""Share of the heartbeats sent in the window the orchestrator must have answered in it: a
connected fleet it cannot hear is not served (our own check, beside the issue's targets)."""
_WORKER = "fedmq.bench._fleet_worker"

_CONFIG = """\
[federation]
id = "fleet"
data_dir = "orchestrator"
heartbeat_s = {heartbeat_s}

[broker]
embedded = true
port = {port}

[model]
kind = "mlp"
n_features = {n_features}
n_classes = {n_classes}
hidden = [32]

[training]
epochs = 1
batch_size = 16
lr = 0.1
deadline_s = 60.0
min_battery_pct = 20.0

[aggregation]
k = {k}

[selection]
concurrency = {concurrency}
retry_after_s = 2.0

[ingest]
synchronous = "{synchronous}"

[evaluation]
dataset = "{validation}"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=DEVICES_TARGET,
                        help=f"lightweight devices ({DEVICES_TARGET})")
    parser.add_argument("--training", type=int, default=20,
                        help="real edge agents training alongside (20)")
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes (2)")
    parser.add_argument("--hold-s", type=float, default=60.0, help="measured window (60)")
    parser.add_argument("--heartbeat-s", type=float, default=10.0, help="heartbeat period (10)")
    parser.add_argument("--connect-rate", type=float, default=150.0,
                        help="new connections per second per worker (150)")
    parser.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL",
                        help="the orchestrator's SQLite synchronous mode (NORMAL)")
    parser.add_argument("--ramp-margin-s", type=float, default=20.0,
                        help="slack after the connection ramp before the window opens (20)")
    parser.add_argument("--quick", action="store_true",
                        help="a small smoke run (100 devices, 3 agents, 5 s window)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args = argparse.Namespace(**{**vars(args), "devices": 100, "training": 3,
                                     "workers": 1, "hold_s": 5.0, "heartbeat_s": 2.0,
                                     "ramp_margin_s": 3.0})
    if args.devices < 1 or args.training < 1 or args.workers < 1 or args.hold_s <= 0:
        raise BenchError("--devices, --training, --workers and --hold-s must be positive")
    _raise_fd_limit(args.devices + args.training * 8 + 1024)
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-fleet-") as tmp:
        return asyncio.run(_run(args, Path(tmp)))


def _raise_fd_limit(need: int) -> None:
    """Children (the orchestrator, hence Mosquitto, and the workers) inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if min(need, hard) < need:
        raise BenchError(f"need {need} file descriptors, the hard limit is {hard}")


def _prepare(args: argparse.Namespace, out: Path) -> tuple[FleetSpec, FleetData, Config]:
    """Files first: the agents' shards, the validation set and the orchestrator config."""
    spec = FleetSpec(devices=args.training, dataset="digits", split="dirichlet", alpha=0.5,
                     battery_fraction=0.0, id_prefix="train")
    data = shard_data(spec)
    np.savez(out / "validation.npz", X=data.test.X, y=_labels(data))
    config_path = out / "orchestrator.toml"
    config_path.write_text(_CONFIG.format(
        heartbeat_s=args.heartbeat_s, port=pick_free_port(), n_features=data.test.X.shape[1],
        n_classes=data.n_classes, k=max(1, min(5, args.training)),
        concurrency=args.training, validation=out / "validation.npz",
        synchronous=args.synchronous))
    return spec, data, load_config(config_path)


@dataclass(frozen=True)
class _Window:
    """What was measured over the hold window."""

    cpu_pct: float
    """The orchestrator process's CPU, in percent of one core."""
    query_ms: float


@dataclass(frozen=True)
class _Updates:
    """Where the training agents' updates ended up, counted by (device, seq)."""

    built: int
    in_ledger: int
    pending: int
    """Still in an outbox and not in the ledger."""

    @property
    def lost(self) -> int:
        return max(0, self.built - self.in_ledger - self.pending)


_Snapshot = dict[str, tuple[int, set[int]]]
"""Per training agent: updates built, and the seqs still in its outbox."""


async def _run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    spec, data, config = await asyncio.to_thread(_prepare, args, out)
    config_path = out / "orchestrator.toml"
    lite_ids = [f"lite-{i:05d}" for i in range(args.devices)]
    started = time.monotonic()
    lite, bundles = await _provision(config, lite_ids, spec.device_ids())
    provision_s = time.monotonic() - started

    orch = await _start_orchestrator(config_path)
    try:
        ramp_s = args.devices / (args.connect_rate * args.workers) + args.ramp_margin_s
        window_start = time.time() + ramp_s
        workers = await _start_workers(args, out, config, lite, bundles[0].orchestrator_key,
                                       window_start=window_start, ramp_s=ramp_s)
        agent_config = AgentConfig(heartbeat_s=args.heartbeat_s, holdout=0.0)
        async with Fleet(bundles, data.shards, out / "agents", spec,
                         agent_config=agent_config) as fleet:
            window = await _hold(args.hold_s, orch.pid, config, window_start)
            reports = [await _worker_report(w, ramp_s + args.hold_s + 60) for w in workers]
            snapshot = await _stop_and_snapshot(fleet, orch)
            training_statuses = sum(a.stats.statuses_sent for a in fleet.agents)
    finally:
        await _stop(orch)
    updates = _count_updates(snapshot, await _ledger_seqs(config, list(snapshot)))
    return _report(args, reports, window, updates, training_statuses=training_statuses,
                   provision_s=provision_s)


async def _start_workers(
    args: argparse.Namespace, out: Path, config: Config, lite: list[list[str]],
    orchestrator_key: str, *, window_start: float, ramp_s: float,
) -> list[asyncio.subprocess.Process]:
    """The load-generator processes, each given its share of the lightweight devices."""
    worker_spec = {
        "host": "127.0.0.1", "port": config.broker.port, "fed": config.federation.id,
        "orchestrator_key": orchestrator_key, "heartbeat_s": args.heartbeat_s,
        "connect_rate": args.connect_rate, "window_start": window_start,
        "window_s": args.hold_s, "enroll_timeout_s": ramp_s + 30.0,
    }
    workers = []
    for w in range(args.workers):
        path = out / f"worker-{w}.json"
        text = json.dumps({**worker_spec, "devices": lite[w::args.workers]})
        await asyncio.to_thread(path.write_text, text)
        workers.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", _WORKER, str(path), stdout=asyncio.subprocess.PIPE))
    return workers


async def _hold(hold_s: float, pid: int, config: Config, window_start: float) -> _Window:
    """Wait for the window to open, then read the orchestrator's CPU over it, with a status
    query timed half way."""
    await asyncio.sleep(max(0.0, window_start - time.time()))
    cpu0, t0 = _cpu_s(pid), time.monotonic()
    await asyncio.sleep(hold_s / 2)
    query_ms = await _status_query_ms(config)
    await asyncio.sleep(max(0.0, hold_s - (time.monotonic() - t0)))
    cpu1, t1 = _cpu_s(pid), time.monotonic()
    return _Window(cpu_pct=100.0 * (cpu1 - cpu0) / (t1 - t0), query_ms=query_ms)


async def _stop_and_snapshot(fleet: Fleet, orch: asyncio.subprocess.Process) -> _Snapshot:
    await _drain(fleet, timeout_s=30.0)
    # the orchestrator stops before the count: nothing reaches the ledger after it, and
    # an update is then in the ledger, in its outbox, or both (ingested, ack not yet
    # back), so counting by (device, seq) is exact while the agents keep training
    await _stop(orch)
    return {a.device_id: (a.stats.updates_built, {e.seq for e in await a.outbox.pending()})
            for a in fleet.agents}


def _count_updates(snapshot: _Snapshot, ledger: Mapping[str, set[int]]) -> _Updates:
    return _Updates(
        built=sum(n for n, _ in snapshot.values()),
        in_ledger=sum(len(ledger[d]) for d in snapshot),
        pending=sum(len(seqs - ledger[d]) for d, (_, seqs) in snapshot.items()),
    )


def _report(
    args: argparse.Namespace, reports: list[dict[str, Any]], window: _Window, updates: _Updates,
    *, training_statuses: int, provision_s: float,
) -> dict[str, Any]:
    connected = sum(r["connected_at_end"] for r in reports)
    heartbeats = sum(r["heartbeats_in_window"] for r in reports)
    answered = sum(r["answers_in_window"] for r in reports)
    errors: dict[str, int] = {}
    for r in reports:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "bench": "fleet",
        "devices": args.devices,
        "connected": connected,
        "connected_at_window_start": sum(r["connected_at_start"] for r in reports),
        "enrolled": sum(r["enrolled"] for r in reports),
        # each heartbeat of a (low-battery) lightweight device is verified, recorded and
        # answered with a deferral: answers are the heartbeats the orchestrator handled
        "heartbeats_per_s": round(answered / args.hold_s, 1),
        "heartbeats_sent_per_s": round(heartbeats / args.hold_s, 1),
        "orchestrator_cpu_pct": round(window.cpu_pct, 1),
        "status_query_ms": round(window.query_ms, 2),
        "status_query": "store read of the device table (fedmq fleet status not built yet)",
        "training_agents": args.training,
        "training_agent_statuses": training_statuses,
        "updates_built": updates.built,
        "updates_in_ledger": updates.in_ledger,
        "updates_pending": updates.pending,
        "updates_lost": updates.lost,
        "hold_s": args.hold_s,
        "synchronous": args.synchronous,
        "provision_s": round(provision_s, 1),
        "errors": errors or "none",
        "targets": {"devices": DEVICES_TARGET, "orchestrator_cpu_pct": CPU_TARGET_PCT,
                    "updates_lost": 0, "heartbeats_handled": KEEP_UP},
        "targets_met": {"devices": connected >= DEVICES_TARGET == args.devices,
                        "orchestrator_cpu_pct": window.cpu_pct < CPU_TARGET_PCT,
                        "updates_lost": updates.lost == 0,
                        "heartbeats_handled": answered >= KEEP_UP * heartbeats},
    }


async def _provision(config: Config, lite_ids: list[str], agent_ids: list[str]
                     ) -> tuple[list[list[str]], list[Bundle]]:
    """Store rows and broker credentials for every device, without a per-device file rewrite
    and broker reload (the embedded broker merges the password file when it starts)."""
    key = load_or_create_key(config.federation.key_path)
    config.federation.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.federation.broker_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    creds: dict[str, tuple[str, bytes]] = {
        dev: (generate_password(), secrets.token_bytes(32)) for dev in [*lite_ids, *agent_ids]}
    async with Store.open(config.federation.store_path, synchronous="NORMAL",
                          federation_id=config.federation.id) as store:
        for dev, (_, secret) in creds.items():
            await store.add_device(dev, secret=secret,
                                   audit=AuditEvent("added", "bench", device=dev))
        await bump_generation(store)
    passwords = {dev: password for dev, (password, _) in creds.items()}
    await asyncio.to_thread(PasswordFile(config.federation.broker_dir / "passwd").set_many,
                            passwords)
    lite = [[dev, creds[dev][0], creds[dev][1].hex()] for dev in lite_ids]
    bundles = [Bundle(device_id=dev, fed=config.federation.id, broker_host="127.0.0.1",
                      broker_port=config.broker.port, mqtt_username=dev,
                      mqtt_password=creds[dev][0], orchestrator_key=public_key_hex(key),
                      enroll_secret=creds[dev][1].hex())
               for dev in agent_ids]
    return lite, bundles


async def _start_orchestrator(config_path: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli.service", "run", "--config", str(config_path),
        "--log-level", "warning", stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while b" ready" not in (line := await proc.stdout.readline()):
                if not line:
                    raise BenchError(f"the orchestrator exited (code {await proc.wait()})")
    except TimeoutError:
        await _stop(proc)
        raise BenchError("the orchestrator was not ready within 60 s") from None
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _status_query_ms(config: Config, repeats: int = 5) -> float:
    """Median time of an operator's fleet summary read from the live store (WAL reader)."""
    times = []
    async with Store.open(config.federation.store_path,
                          federation_id=config.federation.id) as store:
        for _ in range(repeats):
            t = time.perf_counter()
            devices = await store.list_devices()
            now_ms = time.time() * 1000
            summary: dict[str, int] = {}
            for d in devices:
                summary[d.status] = summary.get(d.status, 0) + 1
            summary["seen_30s"] = sum(1 for d in devices
                                      if d.last_seen_ms and now_ms - d.last_seen_ms < 30_000)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


async def _worker_report(proc: asyncio.subprocess.Process, timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    try:
        out = await asyncio.wait_for(proc.stdout.read(), timeout_s)
        await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError("a load-generator process did not finish in time") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BenchError(f"a load-generator process failed (exit {proc.returncode})")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


async def _drain(fleet: Fleet, timeout_s: float) -> int:
    """Wait for the agents' outboxes to empty (every update acknowledged); what is left."""
    for _ in range(int(timeout_s / 0.5)):
        if not fleet.outbox_total():
            break
        await asyncio.sleep(0.5)
    return fleet.outbox_total()


async def _ledger_seqs(config: Config, device_ids: list[str]) -> dict[str, set[int]]:
    """The seqs of each device's updates in the ledger, whatever their status."""
    async with Store.open(config.federation.store_path,
                          federation_id=config.federation.id) as store:
        return {dev: {r.seq for r in await store.ledger(sender=dev) if r.seq is not None}
                for dev in device_ids}


def _labels(data: FleetData) -> np.ndarray:
    """The held-out labels (digits is labelled; an unlabelled set cannot be evaluated)."""
    if data.test.y is None:
        raise BenchError("the benchmark dataset has no labels")
    return data.test.y
