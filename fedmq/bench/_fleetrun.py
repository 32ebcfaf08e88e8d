"""One in-process federation run for the benchmarks: embedded Mosquitto, the orchestrator and a
simulated fleet of real agents on digits, with a config rendered from :class:`RunSettings`.

The run records when each evaluated version appeared (wall seconds since the fleet started)
and, through a thin :class:`Orchestrator` subclass, every ``updates`` payload exactly as it
arrived from the broker, so bytes per update are what was actually published.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import msgpack
import numpy as np

from edge_agent.config import AgentConfig
from fedmq.bench import BenchError
from fedmq.simulate import Fleet, FleetData, FleetSpec, provision_fleet, shard_data
from orchestrator.broker import pick_free_port
from orchestrator.config import Config, load_config
from orchestrator.service import Orchestrator

__all__ = ["RunResult", "RunSettings", "run_federation"]

_TEMPLATE = """\
[federation]
id = "bench"
data_dir = "orchestrator"
heartbeat_s = {heartbeat_s}

[broker]
embedded = true
port = {port}

[model]
kind = "mlp"
n_features = {n_features}
n_classes = {n_classes}
hidden = [{hidden}]
activation = "relu"

[training]
epochs = {epochs}
batch_size = 16
lr = {lr}
codec = "{codec}"
topk_fraction = {topk_fraction}
seal = true
deadline_s = {deadline_s}
min_battery_pct = 0.0

[aggregation]
mode = "{mode}"
k = {k}
staleness = "polynomial"
max_staleness = 20
server_optimizer = "sgd"
server_lr = 1.0
{quorum}round_deadline_s = {round_deadline_s}

[selection]
concurrency = {concurrency}
retry_after_s = 1.0

[ingest]
synchronous = "NORMAL"

[evaluation]
dataset = "{validation}"

[stopping]
{target}max_versions = {max_versions}
max_wall_s = {max_wall_s}
"""


@dataclass(frozen=True, slots=True)
class RunSettings:
    """One federation: the fleet, the codec, the aggregation mode and when to stop."""

    devices: int = 20
    seed: int = 0
    codec: str = "int8"
    topk_fraction: float = 0.01
    mode: str = "async"
    k: int = 10
    concurrency: int = 15
    quorum: int | None = None
    round_deadline_s: float = 60.0
    deadline_s: float = 60.0
    epochs: int = 2
    lr: float = 0.1
    hidden: tuple[int, ...] = (32,)
    target: float | None = None
    """Stop when the server-side accuracy reaches this (None: run to max_versions/max_wall_s)."""
    max_versions: int = 40
    max_wall_s: float = 120.0
    step_ms_median: float = 0.0
    step_sigma: float = 0.0
    offline_fraction: float = 0.0
    outage_s: float = 1800.0
    online_s: float = 1800.0
    time_scale: float = 60.0
    heartbeat_s: float = 2.0


@dataclass(slots=True)
class RunResult:
    timeline: list[tuple[float, int, float]] = field(default_factory=list)
    """(seconds since the fleet started, version, server-side accuracy) per evaluated version."""
    versions: int = 0
    accepted: int = 0
    stop_reason: str = ""
    elapsed_s: float = 0.0
    update_payload_bytes: int = 0
    update_entries: int = 0
    update_entry_bytes: int = 0
    final_params: dict[str, np.ndarray] = field(default_factory=dict)
    """The global model when the run stopped."""

    @property
    def final_accuracy(self) -> float | None:
        return self.timeline[-1][2] if self.timeline else None

    def time_to(self, target: float) -> float | None:
        """Seconds until the first version at or above ``target`` (None: never reached)."""
        return next((t for t, _, acc in self.timeline if acc >= target), None)


def _tally(result: RunResult) -> Callable[[aiomqtt.Message], None]:
    """A tap counting the bytes of every ``updates`` batch as received (batch framing
    included)."""

    def tap(message: aiomqtt.Message) -> None:
        payload = message.payload
        if str(message.topic).endswith("/updates") and isinstance(payload, bytes | bytearray):
            try:
                entries = msgpack.unpackb(bytes(payload))
            except ValueError:
                entries = None
            if isinstance(entries, list):
                result.update_payload_bytes += len(payload)
                result.update_entries += len(entries)
                result.update_entry_bytes += sum(
                    len(e) for e in entries if isinstance(e, bytes))

    return tap


def _render(settings: RunSettings, out: Path, n_features: int, n_classes: int) -> str:
    target = "" if settings.target is None else f"target_metric = {settings.target}\n"
    quorum = "" if settings.quorum is None else f"quorum = {settings.quorum}\n"
    return _TEMPLATE.format(
        heartbeat_s=settings.heartbeat_s, port=pick_free_port(), n_features=n_features,
        n_classes=n_classes, hidden=", ".join(map(str, settings.hidden)),
        epochs=settings.epochs, lr=settings.lr, codec=settings.codec,
        topk_fraction=settings.topk_fraction, deadline_s=settings.deadline_s,
        mode=settings.mode, k=settings.k, quorum=quorum,
        round_deadline_s=settings.round_deadline_s, concurrency=settings.concurrency,
        validation=out / "validation.npz", target=target,
        max_versions=settings.max_versions, max_wall_s=settings.max_wall_s)


def _prepare(settings: RunSettings, out: Path) -> tuple[FleetSpec, FleetData, Config]:
    """Files first: the shards, the held-out validation set and the orchestrator config."""
    spec = FleetSpec(devices=settings.devices, dataset="digits", split="dirichlet", alpha=0.5,
                     seed=settings.seed, battery_fraction=0.0,
                     step_ms_median=settings.step_ms_median, step_sigma=settings.step_sigma,
                     offline_fraction=settings.offline_fraction,
                     outage_s=settings.outage_s, online_s=settings.online_s,
                     time_scale=settings.time_scale)
    data = shard_data(spec)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "validation.npz", X=data.test.X, y=_labels(data))
    config_path = out / "orchestrator.toml"
    config_path.write_text(_render(settings, out, data.test.X.shape[1], data.n_classes))
    return spec, data, load_config(config_path)


async def run_federation(settings: RunSettings, out: Path) -> RunResult:
    """Run one federation in ``out`` (a fresh folder) until its stopping rule fires."""
    spec, data, config = await asyncio.to_thread(_prepare, settings, out)
    bundles = await provision_fleet(config, spec.device_ids())
    result = RunResult()
    orch = Orchestrator(config, tap=_tally(result))
    async with orch:
        agent_config = AgentConfig(heartbeat_s=settings.heartbeat_s, holdout=0.0,
                                   seed=settings.seed)
        started = time.monotonic()
        async with Fleet(bundles, data.shards, out / "agents", spec, agent_config=agent_config):
            await _follow(orch, result, started)
        result.elapsed_s = time.monotonic() - started
        result.stop_reason = orch.stopped_reason or "interrupted"
        result.versions = orch.version
        result.accepted = orch.counters.get("accepted", 0)
        result.final_params = {name: np.array(value) for name, value in orch.params.items()}
    if not result.timeline:
        raise BenchError(f"no evaluated model version within {settings.max_wall_s:g}s "
                         f"(stop reason: {result.stop_reason})")
    return result


async def _follow(orch: Orchestrator, result: RunResult, started: float) -> None:
    """Note each newly evaluated version's accuracy and when it appeared, until the stop."""
    stopped = asyncio.create_task(orch.wait_stopped())
    seen: set[int] = set()
    try:
        while True:
            done = stopped.done()
            now = time.monotonic() - started
            for info in await orch.store.list_versions():
                metric = info.metrics.get("server_metric")
                if info.version not in seen and isinstance(metric, int | float):
                    seen.add(info.version)
                    result.timeline.append((round(now, 2), info.version, float(metric)))
            if done:
                return
            await asyncio.wait({stopped}, timeout=0.25)
    finally:
        stopped.cancel()


def _labels(data: FleetData) -> np.ndarray:
    """The held-out labels (digits is labelled; an unlabelled set cannot be evaluated)."""
    if data.test.y is None:
        raise BenchError("the benchmark dataset has no labels")
    return data.test.y
