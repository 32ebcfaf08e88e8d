"""Forged, misdirected and replayed messages are refused and logged; the agent carries on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from edge_agent.agent import Agent
from edge_agent.data import LocalData
from orchestrator.models import BuiltModel
from schemas import DownKind, Reason
from tests.support.fake_orchestrator import FakeOrchestrator


async def test_forged_model_and_task_are_refused_and_the_agent_keeps_working(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], ready: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-f")
    await orch.publish_model(built_model)
    mallory = SigningKey.generate()
    caplog.set_level(logging.WARNING, logger="edge_agent")
    async with make_agent(bundle, shard, tmp_path / "agent.db") as agent:
        await ready(agent, orch)

        # a model signed by another key, retained over the genuine one
        poisoned = {k: np.full_like(v, 9.0) for k, v in built_model.params.items()}
        await orch.publish_model(built_model, poisoned, version=7, key=mallory)
        # a task signed by another key, and one signed right but for another federation
        await orch.send("dev-f", DownKind.TASK, orch.task(), key=mallory)
        await orch.send("dev-f", DownKind.TASK, orch.task(), fed="otherfed")
        # signed by the orchestrator key but claiming another sender
        await orch.send("dev-f", DownKind.TASK, orch.task(), sender="mallory")
        await agent.wait_until(lambda a: sum(a.stats.refused.values()) == 4, 10)
        assert agent.stats.refused == {Reason.BAD_SIGNATURE.value: 2,
                                       Reason.WRONG_FEDERATION.value: 1,
                                       Reason.SENDER_MISMATCH.value: 1}
        assert agent.model_version == 1 and agent.stats.tasks_received == 0

        # a replayed genuine task (same seq) is trained once
        task = orch.task(epochs=1)
        payload = orch.sign(task, to="dev-f")
        await orch.publish(orch.topics.down("dev-f", DownKind.TASK), payload)
        await orch.publish(orch.topics.down("dev-f", DownKind.TASK), payload)
        await orch.wait_until(lambda: len(orch.updates) == 1)
        await agent.wait_until(lambda a: a.stats.duplicates == 1 and len(a.outbox) == 0, 10)
        assert agent.stats.tasks_received == 1
        assert orch.updates[0].update.task_id == task.task_id
        assert orch.updates[0].update.base_version == 1

    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 4
    assert sum("bad_signature" in m for m in refusals) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_bad_input_on_every_topic_never_crashes(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-g")
    await orch.publish_model(built_model)
    async with make_agent(bundle, shard, tmp_path / "agent.db") as agent:
        await ready(agent, orch)
        junk = [b"", b"\x00", b"\x92\xc4\x01x\xc4\x01y", bytes(range(256)) * 10]
        topics = [orch.topics.model, orch.topics.model_delta,
                  orch.topics.chunk("ab" * 32), orch.topics.down("dev-g", DownKind.ACK),
                  orch.topics.down("dev-g", DownKind.CONTROL)]
        for topic in topics:
            for payload in junk:
                await agent.deliver(topic, payload)
        await agent.deliver("fl/otherfed/down/dev-g/task", orch.sign(orch.task()))
        await agent.deliver("not/a/topic", b"x")
        # a status envelope is not something the orchestrator sends to devices
        await agent.deliver(orch.topics.down("dev-g", DownKind.TASK),
                            orch.sign(agent.last_status,  # type: ignore[arg-type]
                                      to="dev-g"))
        # empty payloads on model topics are cleared retained chunks, not refusals
        assert sum(agent.stats.refused.values()) == 3 * 3 + 2 * 4 + 3
        assert agent.stats.refused[Reason.WRONG_TYPE.value] == 1
        await orch.send_task("dev-g", epochs=1)
        await orch.wait_until(lambda: len(orch.updates) == 1)



async def test_a_task_addressed_to_another_device_is_refused(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], ready: Callable[..., Any],
) -> None:
    """A broker cannot hand device B a message the orchestrator signed for device A."""
    orch = orchestrator
    bundle = await orch.add_device("dev-r")
    await orch.publish_model(built_model)
    async with make_agent(bundle, shard, tmp_path / "agent.db") as agent:
        await ready(agent, orch)
        await orch.send("dev-r", DownKind.TASK, orch.task(epochs=1), to="dev-other")
        await agent.wait_until(lambda a: a.stats.refused.get("wrong_recipient", 0) == 1, 10)
        assert agent.stats.tasks_received == 0
