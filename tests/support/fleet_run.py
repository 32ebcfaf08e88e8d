"""A real orchestrator with real agents on the test broker, and what it did, read back.

:func:`run_fleet` starts :class:`~orchestrator.service.Orchestrator` on the ``broker``
fixture's Mosquitto (a small softmax model on ``wine``), a :class:`fedmq.simulate.Fleet` of
real edge agents, and a :class:`WireLog` that records every update batch and task on the
broker, as the orchestrator's account sees them. It returns once a stopping rule fired (or
``until`` returned) and everything has shut down.

The store keeps an applied update's weight, staleness and norm but drops its delta once the
version is made; the deltas come from the wire instead, decoded with ``schemas`` alone (the
agents send them ``float32`` and unsealed, so they are exactly what the service aggregated).
:func:`version_steps` pairs each aggregate version with its parent's parameters and the
deltas of its applied updates, so a test can recompute the version with the pure functions
of :mod:`orchestrator.aggregation`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from nacl.signing import VerifyKey

from edge_agent.config import AgentConfig
from fedmq.simulate import Fleet, FleetSpec, provision_fleet, shard_data
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config, parse_config
from orchestrator.service import Orchestrator
from orchestrator.store import LedgerEntry, Store, VersionInfo
from schemas import Params, Task, Update, decode_body, decode_params, unpack_batch, verify
from tests.support.observer import observer

FED = "optfed"
WAIT_S = 90.0
"""Upper bound on one run (real agents on a loaded 2-core machine)."""


def base_sections(tmp_path: Path, broker: MosquittoBroker) -> dict[str, dict[str, Any]]:
    """An external-broker config for :func:`run_fleet`; tests merge their options into it."""
    return {
        "federation": {"id": FED, "data_dir": str(tmp_path / "orch"), "heartbeat_s": 1.0},
        "broker": {"embedded": False, "host": broker.host, "port": broker.port,
                   "username": "orchestrator", "password": broker.orchestrator_password,
                   "password_file": str(broker.password_file)},
        # float32 and unsealed: the WireLog can read the exact deltas the service aggregates
        "training": {"epochs": 1, "batch_size": 16, "lr": 0.3, "codec": "float32",
                     "seal": False, "deadline_s": 60.0},
        "aggregation": {"k": 3, "max_staleness": 50},
        # the real worker-process path, one process fewer to start than the default
        "ingest": {"decode_workers": 1},
    }


def merged(base: Mapping[str, Mapping[str, Any]], **sections: Mapping[str, Any]
           ) -> dict[str, dict[str, Any]]:
    out = {name: dict(values) for name, values in base.items()}
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


class WireLog:
    """Subscribes (QoS 1) to every device's ``updates`` and ``task`` topics and keeps the raw
    payloads; decode them afterwards with the keys the store holds."""

    def __init__(self, broker: MosquittoBroker, fed: str) -> None:
        self._broker = broker
        self._stack = contextlib.AsyncExitStack()
        self._fed = fed
        self._task: asyncio.Task[None] | None = None
        self.raw: list[tuple[str, bytes]] = []
        """``(topic, payload)`` in arrival order."""

    async def __aenter__(self) -> WireLog:
        client = await self._stack.enter_async_context(observer(self._broker))
        await client.subscribe(f"fl/{self._fed}/up/+/updates", qos=1)
        await client.subscribe(f"fl/{self._fed}/down/+/task", qos=1)
        self._task = asyncio.create_task(self._receive(client), name="wire-log")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await self._task
        with contextlib.suppress(aiomqtt.MqttError):
            await self._stack.aclose()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes), message.topic
            self.raw.append((str(message.topic), message.payload))

    def updates(self, keys: Mapping[str, bytes]) -> dict[tuple[str, int], Update]:
        """Every signed update sent, by ``(sender, seq)`` (a re-sent copy is the same)."""
        out: dict[tuple[str, int], Update] = {}
        for topic, payload in self.raw:
            if not topic.endswith("/updates"):
                continue
            device = topic.split("/")[3]
            key = VerifyKey(keys[device])
            for entry in unpack_batch(payload).entries:
                opened = verify(entry, key)
                out[(device, opened.header.seq)] = decode_body(opened, Update)
        return out

    def tasks(self, orchestrator_key: bytes) -> dict[str, list[Task]]:
        """The training and evaluation tasks each device was given (deferrals left out)."""
        key = VerifyKey(orchestrator_key)
        out: dict[str, list[Task]] = {}
        for topic, payload in self.raw:
            if not topic.endswith("/task"):
                continue
            opened = verify(payload, key)
            if opened.header.type == Task.TYPE:
                out.setdefault(topic.split("/")[3], []).append(decode_body(opened, Task))
        return out


@dataclass
class FleetRun:
    config: Config
    deltas: dict[tuple[str, int], Params] = field(repr=False)
    """Each update's delta as sent, by ``(sender, seq)``."""
    tasks: dict[str, list[Task]] = field(repr=False)
    stopped: str | None

    @property
    def store_path(self) -> Path:
        return self.config.federation.store_path


Until = Callable[[Orchestrator], Awaitable[None]]


async def run_fleet(tmp_path: Path, broker: MosquittoBroker,
                    sections: Mapping[str, Mapping[str, Any]], *, devices: int,
                    until: Until | None = None, seed: int = 0, prefix: str = "sim"
                    ) -> FleetRun:
    """One run: until a stopping rule fires (configure one) or ``until(orch)`` returns.

    Device ``i`` gets the same data shard and training seed in every run with the same
    ``devices`` and ``seed``, whatever its ``prefix`` (a fresh prefix keeps a second run on
    the same broker clear of the first one's MQTT sessions).
    """
    spec = FleetSpec(devices=devices, dataset="wine", split="iid", seed=seed,
                     battery_fraction=0.0, id_prefix=prefix)
    data = await asyncio.to_thread(shard_data, spec)
    sections = merged(sections, model={
        "kind": "softmax", "n_features": int(data.test.X.shape[1]),
        "n_classes": data.n_classes, "seed": seed})
    config = parse_config(dict(sections), base_dir=tmp_path)
    bundles = await provision_fleet(config, spec.device_ids())
    await broker.reload()
    wire_log = WireLog(broker, config.federation.id)
    async with wire_log as wire, Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with Fleet(bundles, data.shards, tmp_path / "agents", spec,
                         agent_config=AgentConfig(heartbeat_s=1.0, holdout=0.0)):
            async with asyncio.timeout(WAIT_S):
                await (until(orch) if until is not None else orch.wait_stopped())
        keys = {d.device_id: d.public_key for d in await orch.store.list_devices()
                if d.public_key is not None}
        stopped = orch.stopped_reason
        orchestrator_key = orch.public_key
    updates = wire.updates(keys)
    deltas = {k: decode_params(u.tensors) for k, u in updates.items()}
    return FleetRun(config, deltas, wire.tasks(orchestrator_key), stopped)


async def next_version(orch: Orchestrator, version: int) -> bool:
    """Until ``version`` is committed (True) or the federation stops first (False)."""
    made = asyncio.ensure_future(orch.wait_for_version(version))
    stopped = asyncio.ensure_future(orch.wait_stopped())
    try:
        await asyncio.wait({made, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        made.cancel()
        stopped.cancel()
    return orch.version >= version


@dataclass(frozen=True)
class VersionStep:
    """One aggregate version and what it was made from."""

    info: VersionInfo
    parent: Params = field(repr=False)
    params: Params = field(repr=False)
    rows: list[LedgerEntry]
    """Its applied updates, oldest first (the order the service reduced them in)."""
    deltas: list[Params] = field(repr=False)

    @property
    def staleness(self) -> list[int]:
        """Versions behind for each row: the version it was made on minus its base."""
        assert self.info.parent is not None
        return [self.info.parent - int(r.base_version or 0) for r in self.rows]


async def version_steps(run: FleetRun) -> list[VersionStep]:
    """Every aggregate version in the store, with its parent and contributing deltas."""
    steps: list[VersionStep] = []
    async with Store.open(run.store_path) as store:
        for info in await store.list_versions():
            if info.kind != "aggregate":
                continue
            assert info.parent is not None
            rows = sorted(await store.ledger(applied_version=info.version), key=lambda r: r.id)
            assert rows and all(r.status == "applied" for r in rows), info
            assert sorted(info.lineage["updates"]) == [r.id for r in rows]
            deltas = [run.deltas[(str(r.sender), int(r.seq or 0))] for r in rows]
            steps.append(VersionStep(info, (await store.get_version(info.parent)).params,
                                     (await store.get_version(info.version)).params,
                                     rows, deltas))
    return steps


def max_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


ATOL = 1e-5
"""How far a stored version may be from its recomputation: float32 rounding only (it is
bit-identical today; the bound leaves room for a reordered sum)."""


def assert_matches(stored: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                   *others: Mapping[str, np.ndarray], what: str = "") -> None:
    """``stored`` equals ``expected`` and is clearly apart from each of ``others`` (what the
    version would be had the option been ignored)."""
    assert max_diff(stored, expected) <= ATOL, f"{what}: {max_diff(stored, expected):.3g}"
    for other in others:
        assert max_diff(stored, other) > 100 * ATOL, f"{what}: indistinguishable"
