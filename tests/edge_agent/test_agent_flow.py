"""The whole happy path over a real Mosquitto: enroll, model, task, update, ack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import Agent
from edge_agent.data import LocalData
from orchestrator.models import BuiltModel
from schemas import AgentState, Codec, CodecSpec
from tests.support.fake_orchestrator import FakeOrchestrator


async def test_enroll_train_update_ack(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-1")
    await orch.publish_model(built_model)
    async with make_agent(bundle, shard, tmp_path / "agent.db") as agent:
        await ready(agent, orch)
        assert orch.enrolls == 1
        task = await orch.send_task("dev-1", codec=CodecSpec(Codec.INT8), seal=True, epochs=3)
        await orch.wait_until(lambda: len(orch.updates) == 1)
        await agent.wait_until(lambda a: len(a.outbox) == 0, 10)
    got = orch.updates[0]
    assert got.update.task_id == task.task_id
    assert got.update.base_version == 1
    assert got.update.num_samples == len(agent.train_data) == 240
    assert got.update.local_steps == 3 * 8  # 240 samples, batches of 32
    assert got.update.codec is Codec.INT8
    delta = got.delta
    assert list(delta) == list(built_model.params)
    assert all(np.isfinite(v).all() and v.shape == built_model.params[k].shape
               for k, v in delta.items())
    assert any(np.abs(v).max() > 0 for v in delta.values())
    assert agent.stats.acked["accepted"] == 1
    await orch.wait_until(lambda: orch.statuses_of("dev-1")[-1].state is AgentState.OFFLINE)
    assert orch.statuses_of("dev-1")[-1].reason == "shutdown"
