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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from nacl.signing import SigningKey, VerifyKey

from fedmq.bench import BenchError
from fedmq.bench._ingest_kernel import kernel_updates_per_s
from fedmq.bench._proc import STEP_S, child, expect_ready, in_workdir, stop, tail
from fedmq.bench._proc import service as service_process
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config, load_config
from orchestrator.devices.commands import provision
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import Store
from schemas.bundle import Bundle
from schemas.envelope import unseal_key
from schemas.limits import DEFAULT_LIMITS, Limits

__all__ = ["add_arguments", "run"]

UPDATES_TARGET = 1000.0
RATIO_TARGET = 0.5
N_FEATURES, N_CLASSES = 9999, 10  # 99,990 weights + 10 biases = 100,000 parameters
FED = "bench"
_LOAD = "fedmq.bench._ingest_load"


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
    return in_workdir(args.keep, "fedmq-bench-ingest-", lambda workdir: _bench(args, workdir))


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


@dataclass(frozen=True)
class _Outcome:
    """What the load generators report, checked against the store's ledger."""

    acked: int
    """Updates acknowledged as accepted."""
    other: int
    """Updates acknowledged with any other outcome."""
    lost: int
    """Acknowledged as accepted but not in the ledger (must be 0)."""
    seconds: float
    """From the first generator's start to the last one's end."""
    versions: int
    generators: int


async def _bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    async with MosquittoBroker(work / "broker") as broker:
        config_path = work / "ingest.toml"
        config_path.write_text(_config_text(args, broker))
        config = load_config(config_path)
        config.federation.data_dir.mkdir(parents=True, exist_ok=True)
        key = load_or_create_key(config.federation.key_path)
        bundles = await _provision(config, key, args.devices)
        await broker.reload()
        log = work / "orchestrator.log"
        async with service_process(config_path, log) as service:
            await expect_ready(service, log)
            async with Store.open(config.federation.store_path,
                                  federation_id=config.federation.id) as store:
                params = (await store.get_version(0)).params
            shapes = {name: list(p.shape) for name, p in params.items()}
            specs = _generator_specs(args, work, broker, key, bundles, shapes)
            results = await _load(specs, work)
            drain_s = await _drain(config, args.k)
            await stop(service, log)
        outcome = await _check_ledger(config, results)
    kernel, timed = await asyncio.to_thread(
        kernel_updates_per_s, _samples(specs), unseal_key(key), _limits(config),
        min_seconds=args.kernel_seconds)
    return _report(args, outcome, n_params=sum(int(p.size) for p in params.values()),
                   drain_s=drain_s, kernel=kernel, kernel_timed=timed)


async def _provision(config: Config, key: SigningKey, devices: int) -> list[Bundle]:
    """Register the bench's devices in a new store; their bundles."""
    orchestrator_key = public_key_hex(key)
    async with Store.open(config.federation.store_path,
                          federation_id=config.federation.id) as store:
        if await store.latest_version() is not None:
            raise BenchError(f"{config.federation.data_dir} already holds a federation; "
                             "give --keep an empty folder")
        return [await provision(store, config, f"bench-{i:03d}",
                                orchestrator_key=orchestrator_key) for i in range(devices)]


def _generator_specs(
    args: argparse.Namespace, work: Path, broker: MosquittoBroker, key: SigningKey,
    bundles: Sequence[Bundle], shapes: Mapping[str, list[int]],
) -> list[dict[str, Any]]:
    """One load generator's instructions per (non-empty) share of the devices."""
    shares = [bundles[i::args.generators] for i in range(args.generators)]
    return [{
        "host": broker.host, "port": broker.port, "fed": FED,
        "orchestrator_key": public_key_hex(key), "shapes": shapes,
        "batches_per_device": args.batches,
        "batch_entries": args.batch_entries, "window": args.window,
        "sample_per_device": 8, "seed": args.seed * 100 + i,
        "sample_path": str(work / f"sample-{i}.msgpack"),
        "devices": [{"device_id": b.device_id, "password": b.mqtt_password,
                     "secret": b.enroll_secret} for b in share],
    } for i, share in enumerate(s for s in shares if s)]


async def _load(specs: Sequence[Mapping[str, Any]], work: Path) -> list[dict[str, Any]]:
    """Start a generator per spec, wait until all have built their updates, let them go at
    once and return what each one reports."""
    async with contextlib.AsyncExitStack() as stack:
        generators = []
        for i, spec in enumerate(specs):
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
        return [await _read_json(gen, "done", work) for gen in generators]


async def _check_ledger(config: Config, results: Sequence[Mapping[str, Any]]) -> _Outcome:
    acked = {(device, seq) for r in results for device, seqs in r["accepted"].items()
             for seq in seqs}
    async with Store.open(config.federation.store_path,
                          federation_id=config.federation.id) as store:
        rows = await store.ledger(status=("buffered", "applied"))
        latest = await store.latest_version()
    stored = {(r.sender, r.seq) for r in rows}
    return _Outcome(
        acked=len(acked),
        other=sum(len(o) for r in results for o in r["other"].values()),
        lost=len(acked - stored),
        seconds=max(r["ended"] for r in results) - min(r["started"] for r in results),
        versions=latest.version if latest is not None else 0,
        generators=len(results),
    )


def _samples(specs: Sequence[Mapping[str, Any]]) -> dict[str, tuple[VerifyKey, list[bytes]]]:
    """The updates each generator set aside for the kernel floor, by device."""
    samples: dict[str, tuple[VerifyKey, list[bytes]]] = {}
    for spec in specs:
        raw = msgpack.unpackb(Path(spec["sample_path"]).read_bytes())
        for device, item in raw.items():
            samples[device] = (VerifyKey(item["key"]), list(item["entries"]))
    return samples


def _report(
    args: argparse.Namespace, outcome: _Outcome, *, n_params: int, drain_s: float | None,
    kernel: float, kernel_timed: int,
) -> dict[str, Any]:
    rate = outcome.acked / max(outcome.seconds, 1e-9)
    ratio = rate / kernel
    return {
        "bench": "ingest",
        "devices": args.devices,
        "params": n_params,
        "codec": "int8 (signed, sealed)",
        "batch_entries": args.batch_entries,
        "window": args.window,
        "generators": outcome.generators,
        "k": args.k,
        "max_per_version": _per_version(args),
        "durability": args.durability,
        "decode_workers": args.decode_workers,
        "versions": outcome.versions,
        "updates_accepted": outcome.acked,
        "updates_not_accepted": outcome.other,
        "seconds": round(outcome.seconds, 3),
        "aggregation_drain_s": drain_s,
        "updates_per_s": round(rate, 1),
        "kernel_floor_updates_per_s": round(kernel, 1),
        "kernel_updates_timed": kernel_timed,
        "ratio": round(ratio, 3),
        "lost": outcome.lost,
        "cpus": os.cpu_count(),
        "targets": {"updates_per_s": UPDATES_TARGET, "ratio": RATIO_TARGET, "lost": 0},
        "targets_met": {"updates_per_s": rate >= UPDATES_TARGET, "ratio": ratio >= RATIO_TARGET,
                        "lost": outcome.lost == 0},
    }


async def _drain(config: Config, k: int) -> float | None:
    """Seconds after the last ack until aggregation has caught up (fewer than ``k`` updates
    buffered), read from the store beside the running service; None if it did not within
    the step timeout."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Store.open(config.federation.store_path,
                          federation_id=config.federation.id) as store:
        while loop.time() - started < STEP_S:
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


def _generator(spec: Path, log: Path) -> contextlib.AbstractAsyncContextManager[
        asyncio.subprocess.Process]:
    return child(log, "-m", _LOAD, str(spec))


async def _read_json(proc: asyncio.subprocess.Process, key: str, work: Path) -> Any:
    """The generator's next stdout object, which must hold ``key``."""
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(STEP_S):
            line = await proc.stdout.readline()
    except TimeoutError:
        raise BenchError(f"a load generator gave no {key!r} within {STEP_S:g}s") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or key not in obj:
        logs = await asyncio.to_thread(_generator_logs, work)
        raise BenchError(f"a load generator failed before {key!r}: {logs}")
    return obj[key]


def _generator_logs(work: Path) -> str:
    return " | ".join(tail(p) for p in sorted(work.glob("load-*.log")))
