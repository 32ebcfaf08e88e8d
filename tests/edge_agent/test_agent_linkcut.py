"""A link cut: updates produced while the broker is down wait in the outbox, then flush."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.data import LocalData
from orchestrator.broker import MosquittoBroker
from orchestrator.models import BuiltModel
from schemas import DownKind
from tests.support.fake_orchestrator import FakeOrchestrator


async def test_updates_made_offline_are_flushed_in_batches_exactly_once(
    broker: MosquittoBroker, orchestrator: FakeOrchestrator, built_model: BuiltModel,
    shard: LocalData, tmp_path: Path, make_agent: Callable[..., Agent],
    agent_config: Any, ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-cut")
    await orch.publish_model(built_model)
    config = dataclasses.replace(agent_config, batch_entries=3)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config) as agent:
        await ready(agent, orch)
        await orch.send_task("dev-cut", epochs=1)
        await agent.wait_until(lambda a: a.stats.acked["accepted"] == 1, 10)

        await broker.stop()
        await agent.wait_until(lambda a: not a.session.connected, 10)
        # The orchestrator's tasks reach the agent by another path while MQTT is down; they
        # take the same verification path as over MQTT (signature, federation, window).
        topic = orch.topics.down("dev-cut", DownKind.TASK)
        for _ in range(5):
            await agent.deliver(topic, orch.sign(orch.task(epochs=1), to="dev-cut"))
        await agent.wait_until(lambda a: a.stats.updates_built == 6, 15)
        offline = [e.seq for e in await agent.outbox.pending()]
        assert len(offline) == 5 and len(agent.outbox) == 5
        assert agent.stats.batches_sent == 1  # nothing could be sent meanwhile

        await broker.start()
        await agent.wait_until(lambda a: len(a.outbox) == 0, 15)

    received = [seq for dev, seq in orch.accepted if dev == "dev-cut"]
    assert sorted(received[1:]) == offline
    assert len(received) == len(set(received)) == 6  # each update accepted exactly once
    flushed = [b for b in orch.batches if set(b) & set(offline)]
    assert len(flushed) >= 2 and all(len(b) <= 3 for b in flushed)  # in batches of <= 3
    assert all(count >= 1 for count in orch.seq_counts.values())
    assert agent.stats.acked["accepted"] + agent.stats.acked["duplicate"] >= 6
