"""Ingestion throughput of the orchestrator through real Mosquitto (``fedmq bench ingest``).

Everything runs as in production, each part in its own process: a Mosquitto broker, the
service (``fedmq orchestrator run`` with its decode workers, aggregation on: a version every
``--k`` updates) and load-generator processes. Each load
generator enrolls its share of the devices, pre-builds their signed, sealed int8 updates of a
100,000-parameter softmax model (9999 features x 10 classes + 10 biases), then publishes
update batches as fast as acks allow, at most ``--window`` unacknowledged batches per device.

Reported: ``updates_per_s`` — updates acknowledged as accepted per second of the run, each
checked afterwards to be durably in the store's ledger (``lost`` counts those missing; it must
be 0); ``kernel_floor_updates_per_s`` — verify + unseal + decompress + decode + accumulate of a
sample of the same updates, in this process, single thread, after the run; their ``ratio``;
``aggregation_drain_s`` — how long after the last ack aggregation needed to catch up (fewer
than K updates left in the buffer; not part of the timed run).
Targets on a 2-core machine: ``ratio >= 0.5`` and ``updates_per_s >= 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
from nacl.signing import VerifyKey

from fedmq.bench import BenchError
from fedmq.bench._ingest_kernel import kernel_updates_per_s
from orchestrator.broker import BrokerError, MosquittoBroker
from orchestrator.config import Config, load_config
from orchestrator.devices.commands import provision
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import Store
from schemas.envelope import unseal_key
from schemas.limits import DEFAULT_LIMITS, Limits

__all__ = ["add_arguments", "run"]

UPDATES_TARGET = 1000.0
RATIO_TARGET = 0.5
N_FEATURES, N_CLASSES = 9999, 10  # 99,990 weights + 10 biases = 100,000 parameters
FED = "bench"
_LOAD = "fedmq.bench._ingest_load"
_STEP_S = 120.0


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


_positive = _at_least(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=_positive, default=20, help="enrolled devices (20)")
    parser.add_argument("--batches", type=_positive, default=20,
                        help="update batches each device sends (20)")
    parser.add_argument("--batch-entries", type=_positive, default=8,
                        help="updates per batch (8)")
    parser.add_argument("--window", type=_positive, default=2,
                        help="unacknowledged batches allowed per device (2)")
    parser.add_argument("--generators", type=_positive, default=2,
                        help="load-generator processes (2)")
    parser.add_argument("--k", type=_positive, default=20,
                        help="FedBuff buffer size: updates per new version (20)")
    parser.add_argument("--max-per-version", type=_positive, default=None,
                        help="most updates one version folds when aggregation is behind "
                             "(default: k, versions of exactly k updates)")
    parser.add_argument("--decode-workers", type=_at_least(0), default=2,
                        help="the service's decode worker processes, 0 for a thread (2)")
    parser.add_argument("--durability", choices=("NORMAL", "FULL"), default="NORMAL",
                        help="SQLite synchronous mode of the store (NORMAL)")
    parser.add_argument("--kernel-seconds", type=float, default=2.0,
                        help="minimum duration of the kernel-floor measurement (2.0)")
    parser.add_argument("--seed", type=int, default=0, help="delta seed (0)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this folder and keep it (store, logs) instead of a "
                             "temporary one")


def run(args: argparse.Namespace) -> dict[str, Any]:
    try:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            return asyncio.run(_bench(args, args.keep.resolve()))
        with tempfile.TemporaryDirectory(prefix="fedmq-bench-ingest-") as tmp:
            return asyncio.run(_bench(args, Path(tmp)))
    except BrokerError as exc:
        raise BenchError(f"the broker failed: {exc}") from exc


def _config_text(args: argparse.Namespace, broker: MosquittoBroker) -> str:
    return f"""
[federation]
id = "{FED}"
data_dir = "data"
[broker]
embedded = false
host = "{broker.host}"
port = {broker.port}
password = "{broker.orchestrator_password}"
password_file = "{broker.password_file}"
pid_file = "{broker.pid_file}"
[model]
kind = "softmax"
n_features = {N_FEATURES}
n_classes = {N_CLASSES}
[aggregation]
mode = "async"
k = {args.k}
max_per_version = {_per_version(args)}
staleness = "polynomial"
max_staleness = 1000000
[ingest]
synchronous = "{args.durability}"
decode_workers = {args.decode_workers}
"""


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    async with MosquittoBroker(work / "broker") as broker:
        config_path = work / "ingest.toml"
        config_path.write_text(_config_text(args, broker))
        config = load_config(config_path)
        config.federation.data_dir.mkdir(parents=True, exist_ok=True)
        key = load_or_create_key(config.federation.key_path)
        ids = [f"bench-{i:03d}" for i in range(args.devices)]
        async with Store.open(config.federation.store_path) as store:
            if await store.latest_version() is not None:
                raise BenchError(f"{config.federation.data_dir} already holds a federation; "
                                 "give --keep an empty folder")
            bundles = [await provision(store, config, d, orchestrator_key=public_key_hex(key))
                       for d in ids]
        await broker.reload()
        log = work / "orchestrator.log"
        async with _service(config_path, log) as service:
            await _expect_ready(service, log)
            async with Store.open(config.federation.store_path) as store:
                params = (await store.get_version(0)).params
                shapes = {name: list(p.shape) for name, p in params.items()}
            n_params = sum(int(p.size) for p in params.values())
            generators = []
            shares = [bundles[i::args.generators] for i in range(args.generators)]
            async with contextlib.AsyncExitStack() as stack:
                for i, share in enumerate(s for s in shares if s):
                    spec = {
                        "host": broker.host, "port": broker.port, "fed": FED,
                        "orchestrator_key": public_key_hex(key), "shapes": shapes,
                        "batches_per_device": args.batches,
                        "batch_entries": args.batch_entries, "window": args.window,
                        "sample_per_device": 8, "seed": args.seed * 100 + i,
                        "sample_path": str(work / f"sample-{i}.msgpack"),
                        "devices": [{"device_id": b.device_id, "password": b.mqtt_password,
                                     "secret": b.enroll_secret} for b in share],
                    }
                    spec_path = work / f"load-{i}.json"
                    spec_path.write_text(json.dumps(spec))
                    generators.append(await stack.enter_async_context(
                        _generator(spec_path, work / f"load-{i}.log")))
                for gen in generators:
                    await _read_json(gen, "ready", work)
                for gen in generators:
                    assert gen.stdin is not None
                    gen.stdin.write(b"go\n")
                    await gen.stdin.drain()
                results = [await _read_json(gen, "done", work) for gen in generators]
            drain_s = await _drain(config, args.k)
            service.send_signal(signal.SIGTERM)
            async with asyncio.timeout(_STEP_S):
                code = await service.wait()
            if code != 0:
                raise BenchError(f"the service exited with {code}: {_tail(log)}")
        acked = {(device, seq) for r in results for device, seqs in r["accepted"].items()
                 for seq in seqs}
        other = sum(len(o) for r in results for o in r["other"].values())
        async with Store.open(config.federation.store_path) as store:
            rows = await store.ledger(status=("buffered", "applied"))
            latest = await store.latest_version()
        stored = {(r.sender, r.seq) for r in rows}
        lost = len(acked - stored)
        started = min(r["started"] for r in results)
        ended = max(r["ended"] for r in results)
    samples: dict[str, tuple[VerifyKey, list[bytes]]] = {}
    for i in range(len(generators)):
        raw = msgpack.unpackb((work / f"sample-{i}.msgpack").read_bytes())
        for device, item in raw.items():
            samples[device] = (VerifyKey(item["key"]), list(item["entries"]))
    kernel, timed = await asyncio.to_thread(
        kernel_updates_per_s, samples, unseal_key(key), _limits(config),
        min_seconds=args.kernel_seconds)
    rate = len(acked) / max(ended - started, 1e-9)
    ratio = rate / kernel
    return {
        "bench": "ingest",
        "devices": args.devices,
        "params": n_params,
        "codec": "int8 (signed, sealed)",
        "batch_entries": args.batch_entries,
        "window": args.window,
        "generators": len(generators),
        "k": args.k,
        "max_per_version": _per_version(args),
        "durability": args.durability,
        "decode_workers": args.decode_workers,
        "versions": latest.version if latest is not None else 0,
        "updates_accepted": len(acked),
        "updates_not_accepted": other,
        "seconds": round(ended - started, 3),
        "aggregation_drain_s": drain_s,
        "updates_per_s": round(rate, 1),
        "kernel_floor_updates_per_s": round(kernel, 1),
        "kernel_updates_timed": timed,
        "ratio": round(ratio, 3),
        "lost": lost,
        "cpus": os.cpu_count(),
        "targets": {"updates_per_s": UPDATES_TARGET, "ratio": RATIO_TARGET, "lost": 0},
        "targets_met": {"updates_per_s": rate >= UPDATES_TARGET, "ratio": ratio >= RATIO_TARGET,
                        "lost": lost == 0},
    }


async def _drain(config: Config, k: int) -> float | None:
    """Seconds after the last ack until aggregation has caught up (fewer than ``k`` updates
    buffered), read from the store beside the running service; None if it did not within
    the step timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Store.open(config.federation.store_path) as store:
        while loop.time() - started < _STEP_S:
            if await store.buffered_count() < k:
                return round(loop.time() - started, 3)
            await asyncio.sleep(0.05)
    return None


def _per_version(args: argparse.Namespace) -> int:
    k: int = args.k
    return k if args.max_per_version is None else max(k, int(args.max_per_version))


def _limits(config: Config) -> Limits:
    """The service's decode limits (see ``Orchestrator``'s ingest policy)."""
    return Limits(max_envelope_bytes=max(DEFAULT_LIMITS.max_envelope_bytes,
                                         config.ingest.max_update_bytes),
                  max_body_bytes=config.ingest.max_body_bytes)


@contextlib.asynccontextmanager
async def _service(config: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedmq.cli", "orchestrator", "run", "--config", str(config),
            "--log-level", "warning", stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _expect_ready(proc: asyncio.subprocess.Process, log: Path) -> None:
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(_STEP_S):
            line = await proc.stdout.readline()
    except TimeoutError:
        raise BenchError(f"the service did not start: {_tail(log)}") from None
    if b"ready" not in line:
        raise BenchError(f"the service did not start: {_tail(log)}")


@contextlib.asynccontextmanager
async def _generator(spec: Path, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", _LOAD, str(spec), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def _read_json(proc: asyncio.subprocess.Process, key: str, work: Path) -> Any:
    """The generator's next stdout object, which must hold ``key``."""
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(_STEP_S):
            line = await proc.stdout.readline()
    except TimeoutError:
        raise BenchError(f"a load generator gave no {key!r} within {_STEP_S:g}s") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or key not in obj:
        logs = await asyncio.to_thread(_generator_logs, work)
        raise BenchError(f"a load generator failed before {key!r}: {logs}")
    return obj[key]


def _generator_logs(work: Path) -> str:
    return " | ".join(_tail(p) for p in sorted(work.glob("load-*.log")))


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " / ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
