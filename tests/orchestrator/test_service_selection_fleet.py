"""Selection and pace steering with real agents (``edge_agent.Agent`` with simulated probes),
a real Mosquitto and the real orchestrator: a discharging device below the battery floor is
never tasked, a hot one is deferred, no device exceeds its participation cap, and deferred
agents wait out the retry time they were given before asking again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from nacl.signing import VerifyKey

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from edge_agent.probes import SimulatedProbe, SimulationProfile
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from schemas import AgentState, Defer, Status, Task, message_type, verify
from schemas.envelope import decode_body
from tests.support.observer import observer
from tests.support.waiting import until

PROFILES = {
    "low": SimulationProfile(battery_pct=5.0),  # never plugged in: not charging
    "hot": SimulationProfile(battery_pct=None, ambient_c=95.0),  # critical, and stays so
    "ok-1": SimulationProfile(battery_pct=None),
    "ok-2": SimulationProfile(battery_pct=90.0),
}


def _data(seed: int) -> LocalData:
    rng = np.random.default_rng(seed)
    return LocalData(X=rng.standard_normal((30, 8)).astype(np.float32),
                     y=rng.integers(0, 3, 30).astype(np.int64))


class _Wire:
    """Watches one device's asks (status) and answers (task topic) on the broker."""

    def __init__(self, device: str, fed: str) -> None:
        self.device = device
        self.fed = fed
        self.events: list[tuple[float, Any]] = []

    async def watch(self, client: aiomqtt.Client, orch_key: Any, device_key: Any) -> None:
        await client.subscribe(f"fl/{self.fed}/down/{self.device}/task", qos=1)
        await client.subscribe(f"fl/{self.fed}/up/{self.device}/status", qos=1)
        async for message in client.messages:
            if not message.payload:
                continue
            down = "/down/" in str(message.topic)
            opened = verify(bytes(message.payload), orch_key if down else device_key)
            self.events.append((time.monotonic(), decode_body(opened, message_type(opened))))


async def test_weak_devices_are_spared_caps_hold_and_deferrals_are_followed(
    make_config: Callable[..., Config], broker: MosquittoBroker,
    mqtt_client: Callable[..., aiomqtt.Client], tmp_path: Path,
) -> None:
    config = make_config(
        aggregation={"k": 2, "max_staleness": 10},
        selection={"concurrency": 4, "retry_after_s": 1.0, "max_tasks_per_window": 2,
                   "window_s": 600.0, "fair_reserve": 0.0},
        training={"min_battery_pct": 20.0, "max_thermal": "fair", "deadline_s": 30.0},
    )
    agent_config = AgentConfig(heartbeat_s=0.2, holdout=0.0, seed=1)
    async with Orchestrator(config, store_synchronous="NORMAL") as orch, \
            contextlib.AsyncExitStack() as stack:
        bundles = {d: await provision(orch.store, config, d,
                                      orchestrator_key=orch.public_key.hex())
                   for d in PROFILES}
        await broker.reload()
        agents: dict[str, Agent] = {}
        for i, (device, profile) in enumerate(PROFILES.items()):
            agents[device] = await stack.enter_async_context(Agent(
                bundles[device], _data(i), tmp_path / f"{device}.db", config=agent_config,
                probe=SimulatedProbe(profile)))
        async with asyncio.timeout(15):
            await agents["low"].wait_until(lambda a: a.last_status is not None, 15)
        wire = _Wire("low", config.federation.id)
        spy = await stack.enter_async_context(observer(broker))
        watcher = asyncio.create_task(wire.watch(
            spy, VerifyKey(bytes.fromhex(bundles["low"].orchestrator_key)),
            agents["low"].local_state.signing_key.verify_key))
        try:
            # two eligible devices, capped at two tasks each, k = 2: exactly two versions,
            # then both are held back by the cap
            async with asyncio.timeout(45):
                await orch.wait_for_version(2)
            await until(lambda: orch.counters["deferred.participation_cap"] >= 2, 30)
            # more asks from everyone, all answered "later" (the weak ones once per retry)
            await until(lambda: orch.counters["deferred.battery"] >= 2
                        and orch.counters["deferred.thermal"] >= 2, 30)
            # the observer joined after the first answers: wait until it saw two of its own
            await until(lambda: sum(isinstance(m, Defer) for _, m in wire.events) >= 2, 30)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

        assert agents["low"].stats.tasks_received == 0
        assert agents["hot"].stats.tasks_received == 0
        assert orch.counters["deferred.battery"] >= 2
        assert orch.counters["deferred.thermal"] >= 2
        for device in ("ok-1", "ok-2"):
            assert 1 <= agents[device].stats.tasks_received <= 2, device
        applied = await orch.store.ledger(status=("buffered", "applied"))
        per_device = {d: sum(1 for e in applied if e.sender == d) for d in PROFILES}
        assert per_device["low"] == per_device["hot"] == 0
        assert max(per_device.values()) <= 2
        # nothing stopped the federation: the cap alone held them back
        assert orch.stopped_reason is None

        # pace steering as seen on the wire: every deferral carries a retry time, and the
        # device's next ask (an idle status) comes no earlier than that
        defers = [(t, m) for t, m in wire.events if isinstance(m, Defer)]
        assert len(defers) >= 2, wire.events
        assert all(m.reason == "battery" and m.retry_after_ms > 0 for _, m in defers)
        assert not any(isinstance(m, Task) for _, m in wire.events)
        statuses = [(t, m) for t, m in wire.events if isinstance(m, Status)]
        assert any(m.state is AgentState.DEFERRED for _, m in statuses)
        # until its retry time the agent reports itself deferred: it does not ask (an idle
        # status) early. The slack at both ends covers the observer and the agent hearing
        # the deferral at slightly different moments (a heartbeat already on its way when
        # the deferral arrived); an agent ignoring it would ask within a heartbeat (0.2 s).
        during = 0
        for t, defer in defers:
            retry_at = t + defer.retry_after_ms / 1000 - 0.2
            for s_t, status in statuses:
                if t + 0.05 < s_t < retry_at:
                    during += 1
                    assert status.state is AgentState.DEFERRED, (t, defer, s_t, status)
        assert during >= 1


async def test_device_classes_get_their_own_task_settings(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    config = make_config(
        selection={"classes": True, "slow_step_ms": 50.0, "slow_batch_size": 8,
                   "fast_cores": 4, "fast_epochs": 3},
        training={"epochs": 2, "batch_size": 32, "codec": "int8"})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        answers: dict[str, Task] = {}
        statuses: dict[str, dict[str, Any]] = {"slow": {"step_time_ms": 120.0, "cores": 4},
                                               "fast": {"step_time_ms": 4.0, "cores": 8},
                                               "plain": {"cores": 2}}
        for device, status in statuses.items():
            dev = await devices(orch, device)
            await dev.status(**status)
            answer = await dev.next("task")
            assert isinstance(answer, Task), answer
            answers[device] = answer
    slow, fast, plain = answers["slow"], answers["fast"], answers["plain"]
    assert (slow.epochs, slow.batch_size, slow.codec.codec.value) == (1, 8, "topk")
    assert (fast.epochs, fast.batch_size, fast.codec.codec.value) == (3, 32, "int8")
    assert (plain.epochs, plain.batch_size, plain.codec.codec.value) == (2, 32, "int8")
    assert orch.counters["tasks.slow"] == orch.counters["tasks.fast"] == 1
