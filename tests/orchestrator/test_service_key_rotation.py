"""Rotation of the orchestrator's own key: a real Mosquitto, real agents, the real orchestrator.

``request_rotation`` (what ``fedmq orchestrator rotate-key`` runs) writes the next key; the
service announces it signed by the old key, switches, and republishes the model under the new
key. Training agents adopt it and refuse the old key afterwards; the ledger shows every update
once. On a fake clock: an agent offline during the rotation recovers within the grace, one
back after it ends with one clear line, and a restart mid-rotation keeps the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.link.keyring import RotationError, next_path, retiring_path
from orchestrator.link.keys import load_key
from orchestrator.link.rotation import load_rotation, request_rotation
from orchestrator.service import Orchestrator
from schemas import Bundle, DownKind, EnrollStatus, Reason, Task, pack
from tests.support.agents import FAST, new_agent, random_data
from tests.support.clock import FakeClock
from tests.support.waiting import until

GRACE_S = 60.0
AGENT = dataclasses.replace(FAST, holdout=0.0)

KEYS = ("keys",)
"""The task that announces and retires keys: time moves only while it sleeps, so it acts at
its own time however slow the machine."""


async def _enrolled(orch: Orchestrator, broker: MosquittoBroker, device_id: str) -> Bundle:
    bundle = await provision(orch.store, orch.config, device_id,
                             orchestrator_key=orch.public_key.hex())
    await broker.reload()
    return bundle


async def _ready(agent: Agent) -> None:
    await agent.wait_until(lambda a: a.enrollment is not None
                           and a.enrollment.status is EnrollStatus.ACTIVE
                           and a.session.connected and a.model_version is not None, 15)


async def test_training_agents_adopt_the_new_key_and_refuse_the_old_one(
    make_config: Callable[..., Config], broker: MosquittoBroker, tmp_path: Path,
) -> None:
    config = make_config(aggregation={"k": 2, "max_staleness": 20},
                         selection={"concurrency": 2, "retry_after_s": 0.2})
    agent_config = AgentConfig(heartbeat_s=0.2, holdout=0.0, seed=1, ack_timeout_s=1.0)
    async with Orchestrator(config, store_synchronous="NORMAL") as orch, \
            contextlib.AsyncExitStack() as stack:
        old = load_key(config.federation.key_path)
        agents = []
        for i in range(2):
            bundle = await _enrolled(orch, broker, f"dev-{i}")
            agents.append(await stack.enter_async_context(Agent(
                bundle, random_data(i), tmp_path / f"dev-{i}.db", config=agent_config)))
        async with asyncio.timeout(60):
            await orch.wait_for_version(2)  # they train

        rotation = await request_rotation(orch.store, config.federation.key_path,
                                          grace_s=3600, actor="test",
                                          now_ms=int(time.time() * 1000))
        new = bytes.fromhex(rotation.new_public)
        await until(lambda: orch.public_key == new, 20)
        for agent in agents:
            await agent.wait_until(lambda a: a.orchestrator_key == new, 20)
        mark = orch.version
        async with asyncio.timeout(60):
            await orch.wait_for_version(mark + 3)  # training goes on under the new key

        # signed by the old key after the agent saw the new one sign: refused
        agent = agents[0]
        refused = agent.stats.refused[Reason.BAD_SIGNATURE.value]
        tasks = agent.stats.tasks_received
        forged = pack(Task("forged", orch.version), key=old, fed=config.federation.id,
                      sender="orchestrator", seq=10**12, ts_ms=int(time.time() * 1000),
                      to=agent.device_id)
        await agent.deliver(agent.topics.down(agent.device_id, DownKind.TASK), forged)
        assert agent.stats.refused[Reason.BAD_SIGNATURE.value] == refused + 1
        assert agent.stats.tasks_received == tasks

        for a in agents:
            a.stop()
        for a in agents:
            await a.run_until()
        rows = await orch.store.ledger()
        # nothing lost to a key the orchestrator could not open, nothing counted twice
        assert not [r for r in rows if r.status == "rejected"], rows
        seqs = Counter((r.sender, r.seq) for r in rows)
        assert max(seqs.values()) == 1
        audit = [r.event for r in await orch.store.list_audit()]
        assert "key_rotation_requested" in audit and "key_rotated" in audit
        with pytest.raises(RotationError, match="already announced"):
            await request_rotation(orch.store, config.federation.key_path, grace_s=10,
                                   actor="test", now_ms=int(time.time() * 1000))


async def test_offline_agents_recover_within_the_grace_or_get_one_clear_line_after_it(
    make_config: Callable[..., Config], broker: MosquittoBroker, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    config = make_config()
    key_path = config.federation.key_path
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        early = await _enrolled(orch, broker, "dev-early")
        late = await _enrolled(orch, broker, "dev-late")
        for bundle in (early, late):
            async with new_agent(bundle, random_data(1), tmp_path / f"{bundle.device_id}.db",
                                 AGENT) as agent:
                await _ready(agent)
        rotation = await request_rotation(orch.store, key_path, grace_s=GRACE_S,
                                          actor="test", now_ms=clock.wall_ms())
        assert next_path(key_path).exists()
        await clock.advance(1.0, wait_for=KEYS)  # the keys task announces
        new = bytes.fromhex(rotation.new_public)
        await until(lambda: orch.public_key == new)

    # a restart mid-rotation: the new key signs, the old one is still kept for the grace
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        assert orch.public_key == new
        assert retiring_path(key_path).exists() and not next_path(key_path).exists()
        announced = await load_rotation(orch.store)
        assert announced is not None and announced.phase == "announced"

        # back within the grace: the retained announcement, then the model under the new key
        async with new_agent(early, random_data(1), tmp_path / "dev-early.db", AGENT) as agent:
            await agent.wait_until(lambda a: a.orchestrator_key == new, 15)
            await _ready(agent)
        # a device added now pins the new key
        assert (await _enrolled(orch, broker, "dev-new")).orchestrator_key == new.hex()

        await clock.advance(GRACE_S + 1.0, wait_for=KEYS)
        await until(lambda: not retiring_path(key_path).exists())
        async with asyncio.timeout(10):
            while not await orch.store.list_audit(event="key_retired"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        # back after the grace (its clock says so too): one clear line, and the agent ends
        caplog.set_level(logging.ERROR, logger="edge_agent")
        offset = GRACE_S + 30.0
        async with new_agent(late, random_data(2), tmp_path / "dev-late.db", AGENT,
                             clock=lambda: time.time() + offset) as agent:
            assert await agent.run_until() == "orchestrator_key_changed"
        lines = [r.getMessage() for r in caplog.records
                 if "missed the announcement" in r.getMessage()]
        assert len(lines) == 1 and "re-enroll" in lines[0]


async def _retired(orch: Orchestrator, clock: FakeClock, count: int) -> None:
    await clock.advance(GRACE_S + 1.0, wait_for=KEYS)
    async with asyncio.timeout(10):
        while len(await orch.store.list_audit(event="key_retired")) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_second_rotation_is_followed_by_agents_that_saw_the_first_and_refused_during_it(
    make_config: Callable[..., Config], broker: MosquittoBroker, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    config = make_config()
    key_path = config.federation.key_path
    on_fake_wall = {"clock": lambda: clock.wall_ms() / 1000}  # the agents' clock: the service's
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        first = await _enrolled(orch, broker, "dev-first")  # back for the first rotation only
        # its bundle pins the first key but it boots only after both rotations, so no broker
        # session kept the first announcement for it: only what is retained reaches it
        lost = await _enrolled(orch, broker, "dev-lost")
        async with new_agent(first, random_data(1), tmp_path / "dev-first.db", AGENT,
                             **on_fake_wall) as agent:
            await _ready(agent)

        one = await request_rotation(orch.store, key_path, grace_s=GRACE_S, actor="test",
                                     now_ms=clock.wall_ms())
        await clock.advance(1.0, wait_for=KEYS)
        key_one = bytes.fromhex(one.new_public)
        await until(lambda: orch.public_key == key_one)
        with pytest.raises(RotationError, match="already announced"):  # not during the grace
            await request_rotation(orch.store, key_path, grace_s=GRACE_S, actor="test",
                                   now_ms=clock.wall_ms())
        async with new_agent(first, random_data(1), tmp_path / "dev-first.db", AGENT,
                             **on_fake_wall) as agent:
            await agent.wait_until(lambda a: a.orchestrator_key == key_one, 15)
            await _ready(agent)
        await _retired(orch, clock, 1)

        two = await request_rotation(orch.store, key_path, grace_s=GRACE_S, actor="test",
                                     now_ms=clock.wall_ms())
        assert two.generation == 2 and two.old_public == one.new_public
        await clock.advance(1.0, wait_for=KEYS)
        key_two = bytes.fromhex(two.new_public)
        await until(lambda: orch.public_key == key_two)

        # it saw the first announcement: it follows the second, signed by the key it adopted
        async with new_agent(first, random_data(1), tmp_path / "dev-first.db", AGENT,
                             **on_fake_wall) as agent:
            await agent.wait_until(lambda a: a.orchestrator_key == key_two, 15)
            await _ready(agent)

        # it saw neither: the first announcement, still retained on model/key/1 and signed by
        # the key it pins, tells it in one line (the second is signed by a key it never knew)
        caplog.set_level(logging.ERROR, logger="edge_agent")
        async with new_agent(lost, random_data(2), tmp_path / "dev-lost.db", AGENT,
                             **on_fake_wall) as agent, asyncio.timeout(30):
            assert await agent.run_until() == "orchestrator_key_changed"
        lines = [r.getMessage() for r in caplog.records
                 if "missed the announcement" in r.getMessage()]
        assert len(lines) == 1 and "re-enroll" in lines[0]
