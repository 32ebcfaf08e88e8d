"""Several agents in one process (as the simulator runs them), one with a flapping link."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import Agent
from edge_agent.data import LocalData
from edge_agent.probes import SimulatedProbe, SimulationProfile
from orchestrator.models import BuiltModel
from schemas import DownKind
from tests.support.fake_orchestrator import FakeOrchestrator


async def test_three_agents_share_a_process_and_an_executor(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    await orch.publish_model(built_model)
    link = {"up": True}
    flapping = SimulatedProbe(SimulationProfile(), link=lambda _t: link["up"])
    config = dataclasses.replace(agent_config, link_poll_s=0.05)
    parts = np.array_split(np.arange(len(shard)), 3)
    with ThreadPoolExecutor(max_workers=2) as pool:
        async with AsyncExitStack() as stack:
            agents = []
            for i, part in enumerate(parts):
                bundle = await orch.add_device(f"sim-{i}")
                data = LocalData(shard.X[part], shard.y[part] if shard.y is not None else None)
                probe = flapping if i == 0 else SimulatedProbe()
                agents.append(await stack.enter_async_context(make_agent(
                    bundle, data, tmp_path / f"sim-{i}.db", config, probe=probe,
                    executor=pool)))
            await asyncio.gather(*(ready(a, orch) for a in agents))
            for a in agents:
                await orch.send_task(a.device_id, epochs=1)
            await orch.wait_until(lambda: len(orch.updates) == 3)

            link["up"] = False  # sim-0 loses its link: it disconnects, trains, keeps the update
            await agents[0].wait_until(lambda a: not a.session.connected, 5)
            topic = orch.topics.down("sim-0", DownKind.TASK)
            await agents[0].deliver(topic, orch.sign(orch.task(epochs=1), to="sim-0"))
            await agents[0].wait_until(lambda a: len(a.outbox) == 1, 10)
            connections = agents[0].session.connections
            link["up"] = True
            await agents[0].wait_until(lambda a: len(a.outbox) == 0, 10)
            assert agents[0].session.connections == connections + 1
    assert sorted(u.device for u in orch.updates) == ["sim-0", "sim-0", "sim-1", "sim-2"]
    assert [a.stats.acked["accepted"] for a in agents] == [2, 1, 1], (
        [a.stats for a in agents], orch.seq_counts, orch.batches)

