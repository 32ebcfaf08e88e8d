"""Device key rotation end to end: real agents (``edge_agent.Agent``) training against the real
orchestrator over a real Mosquitto. A rotation in the middle of training loses no update and
counts none twice (ledger check); the store ends with the agent's new key; a device that sent
``KeyRotation`` and went offline before the confirmation recovers when it returns."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.devices.rotation import request_rotation
from orchestrator.service import Orchestrator
from tests.support.agents import FAST, new_agent, random_data
from tests.support.ledger import no_update_lost_or_counted_twice
from tests.support.waiting import until

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2, holdout=0.0)


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(aggregation={"k": 2, "max_staleness": 50},
                       selection={"concurrency": 4, "retry_after_s": 0.2})


async def _key_of(orch: Orchestrator, device: str) -> bytes | None:
    stored = await orch.store.get_device(device)
    return None if stored is None else stored.public_key


async def test_a_key_rotated_while_training_loses_and_doubles_no_update(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(2)]
        await broker.reload()
        async with new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT) as a0, \
                new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT) as a1:
            async with asyncio.timeout(30):
                await orch.wait_for_version(1)
            old = bytes(a0.local_state.signing_key.verify_key)
            await request_rotation(orch.store, "dev-0", now_ms=int(time.time() * 1000))
            await a0.wait_until(lambda a: a.stats.keys_rotated == 1, 20)
            new = bytes(a0.local_state.signing_key.verify_key)
            assert new != old and await _key_of(orch, "dev-0") == new
            version = orch.version
            # training goes on under the new key: more versions, updates from both agents
            built = a0.stats.updates_built
            async with asyncio.timeout(40):
                await orch.wait_for_version(version + 2)
            await a0.wait_until(lambda a: a.stats.updates_built > built, 30)
            a0.stop()
            a1.stop()
            await a0.run_until(), await a1.run_until()
            for agent in (a0, a1):
                await no_update_lost_or_counted_twice(orch, agent)
        (row,) = await orch.store.list_audit(device="dev-0", event="key_rotated")
        assert row.detail["old_key"] == old.hex() and row.detail["new_key"] == new.hex()
        assert orch.counters["rotate.rotated"] == 1


async def test_a_device_offline_across_its_rotation_recovers_when_it_returns(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    state = tmp_path / "off.db"
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundle = await provision(orch.store, config, "dev-off",
                                 orchestrator_key=orch.public_key.hex())
        await broker.reload()
        async with new_agent(bundle, random_data(2), state, AGENT) as agent:
            await agent.wait_until(lambda a: a.enrollment is not None and a.session.connected
                                   and a.stats.statuses_sent > 0, 15)
            old = bytes(agent.local_state.signing_key.verify_key)
        built_before = agent.stats.updates_built
        # the orchestrator is down: the agent starts a rotation, sends it, and goes offline
        # before any confirmation can come
    async with new_agent(bundle, random_data(2), state, AGENT) as agent:
        await agent.wait_until(lambda a: a.session.connected, 15)
        await agent.rotator.begin("test")
        await agent.wait_until(lambda a: a.stats.rotations_sent >= 1, 15)
        pending = agent.rotator.pending
        assert pending is not None
    built_before += agent.stats.updates_built
    # the pending key survived in the state file; the old key still signs
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        # the KeyRotation waited at the broker in the orchestrator's session: it rotates now
        await until(lambda: orch.counters["rotate.rotated"] == 1, 20)
        assert await _key_of(orch, "dev-off") == bytes(pending.verify_key)
        async with new_agent(bundle, random_data(2), state, AGENT) as agent:
            assert agent.rotator.pending is not None
            assert bytes(agent.local_state.signing_key.verify_key) == old
            # back: confirmed (queued, or asked again with the old key) and switched
            await agent.wait_until(lambda a: a.stats.keys_rotated == 1, 20)
            assert agent.rotator.pending is None
            assert bytes(agent.local_state.signing_key.verify_key) == bytes(pending.verify_key)
            # and heard under the new key: it trains and its updates are accepted
            async with asyncio.timeout(40):
                await orch.wait_for_version(1)
            agent.stop()
            await agent.run_until()
            await no_update_lost_or_counted_twice(orch, agent, built_before)
