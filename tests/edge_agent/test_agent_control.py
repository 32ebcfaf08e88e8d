"""Deferral, control orders, federated evaluation, restarts and enrollment outcomes."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.data import LocalData
from orchestrator.models import BuiltModel
from schemas import AgentState, Codec, CodecSpec, ControlAction, EnrollStatus, TaskAction
from tests.support.agent_clock import FakeClock
from tests.support.fake_orchestrator import FakeOrchestrator


def _status_stamped(orch: FakeOrchestrator, ts_ms: int) -> Callable[[], bool]:
    """The orchestrator holds a status the agent signed at ``ts_ms``."""
    return lambda: any(h.ts_ms == ts_ms for _, h, _ in orch.statuses)


async def test_a_deferred_agent_does_not_ask_again_before_the_retry_time(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
    fake_clock: FakeClock,
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-d")
    await orch.publish_model(built_model)
    # heartbeats keep flowing every 0.1 s of clock time (the link poll stays out of the way)
    config = dataclasses.replace(agent_config, heartbeat_s=0.1, link_poll_s=3600.0)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config,
                          clock=fake_clock) as agent:
        await ready(agent, orch)
        first = len(orch.statuses)
        sent_ms = fake_clock.wall_ms()
        await orch.defer("dev-d", retry_after_ms=800)

        def since_deferred() -> list[tuple[int, AgentState]]:
            states = [(h.ts_ms, s.state) for _, h, s in orch.statuses[first:]]
            starts = [i for i, (_, st) in enumerate(states) if st is AgentState.DEFERRED]
            return states[starts[0]:] if starts else []

        await orch.wait_until(lambda: bool(since_deferred()))
        assert agent.defer_until_ms == sent_ms + 800
        while not any(st is AgentState.IDLE for _, st in since_deferred()):
            # advance only once the heartbeat waits: one status per step, stamped at its time
            sleeper = await fake_clock.sleeper(lambda s: s.duration <= 0.101)
            await fake_clock.advance(sleeper.remaining)
            await orch.wait_until(_status_stamped(orch, fake_clock.wall_ms()))
    after = since_deferred()
    deferred = [ts for ts, st in after if st is AgentState.DEFERRED]
    idle = [ts for ts, st in after if st is AgentState.IDLE]
    assert len(deferred) >= 3  # heartbeats went on, but none of them asked for work
    assert min(idle) >= agent.defer_until_ms
    assert max(deferred) < agent.defer_until_ms
    # the first ask came when the deferral ended, not a heartbeat later
    assert min(idle) - agent.defer_until_ms <= 1


async def test_stop_resume_isolate_reconfigure(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
    fake_clock: FakeClock,
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-c")
    await orch.publish_model(built_model)

    def last_state() -> tuple[AgentState, str]:
        s = orch.statuses_of("dev-c")[-1]
        return s.state, s.reason

    config = dataclasses.replace(agent_config, link_poll_s=3600.0)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config,
                          clock=fake_clock) as agent:
        await ready(agent, orch)
        await orch.control("dev-c", ControlAction.STOP, reason="converged")
        await orch.wait_until(lambda: last_state() == (AgentState.STOPPED, "federation_stopped"))
        await orch.send_task("dev-c")
        await agent.wait_until(lambda a: a.stats.tasks_received == 1, 5)
        await orch.control("dev-c", ControlAction.RESUME)
        await orch.wait_until(lambda: last_state() == (AgentState.IDLE, ""))
        assert agent.stats.updates_built == 0  # the task that came while stopped was ignored

        await orch.control("dev-c", ControlAction.ISOLATE, reason="isolated")
        await orch.wait_until(lambda: last_state() == (AgentState.STOPPED, "isolated"))
        await orch.control("dev-c", ControlAction.REINSTATE)
        await orch.wait_until(lambda: last_state() == (AgentState.IDLE, ""))

        await orch.control("dev-c", ControlAction.RECONFIGURE, params={"heartbeat_s": 0.05})
        beats = []
        for _ in range(5):  # faster heartbeats: every 0.05 s of clock time
            sleeper = await fake_clock.sleeper(lambda s: s.duration == pytest.approx(0.05))
            await fake_clock.advance(sleeper.remaining)
            beats.append(fake_clock.wall_ms())
            await orch.wait_until(_status_stamped(orch, beats[-1]))
        assert [b - a for a, b in itertools.pairwise(beats)] == [50] * 4

        await orch.publish_model(built_model, stopped=True)  # a stopped model: go idle
        await orch.wait_until(lambda: last_state() == (AgentState.STOPPED, "federation_stopped"))
        assert agent.model_version == 2


async def test_revoke_ends_the_agent_when_asked_to(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-r")
    await orch.publish_model(built_model)
    config = dataclasses.replace(agent_config, exit_on_revoke=True)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config) as agent:
        await ready(agent, orch)
        await orch.control("dev-r", ControlAction.REVOKE, reason="lost device")
        assert await agent.run_until() == "revoked"
    await orch.wait_until(lambda: orch.statuses_of("dev-r")[-1].state is AgentState.OFFLINE)
    assert orch.statuses_of("dev-r")[-1].reason == "revoked"


async def test_evaluation_on_the_local_holdout(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-e")
    await orch.publish_model(built_model)
    async with make_agent(bundle, shard, tmp_path / "agent.db") as agent:
        await ready(agent, orch)
        task = await orch.send_task("dev-e", action=TaskAction.EVALUATE)
        await orch.wait_until(lambda: len(orch.evals) == 1)
    report = orch.evals[0]
    assert report.task_id == task.task_id and report.model_version == 1
    assert report.num_samples == len(agent.holdout_data) == 60
    assert report.metric_name == "accuracy" and 0.0 <= report.metric <= 1.0
    assert report.loss > 0


async def test_restart_keeps_enrollment_model_and_residual(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-s")
    await orch.publish_model(built_model)
    state = tmp_path / "agent.db"
    async with make_agent(bundle, shard, state) as agent:
        await ready(agent, orch)
        await orch.send_task("dev-s", codec=CodecSpec(Codec.TOPK, topk_fraction=0.1))
        await agent.wait_until(lambda a: a.stats.acked["accepted"] == 1, 10)
        residual = await agent.local_state.residual()
    assert residual and any(abs(v).max() > 0 for v in residual.values())
    async with make_agent(bundle, shard, state) as again:
        assert again.enrollment is not None and again.model_version == 1
        assert again.enrollment.status is EnrollStatus.ACTIVE
        await again.wait_until(lambda a: a.session.connected, 10)
        await orch.send_task("dev-s")
        await orch.wait_until(lambda: len(orch.updates) == 2)
    assert orch.enrolls == 1


@pytest.mark.parametrize("outcome", [EnrollStatus.REJECTED, EnrollStatus.AWAITING_APPROVAL])
async def test_enrollment_outcomes(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], outcome: EnrollStatus, caplog: pytest.LogCaptureFixture,
) -> None:
    orch = orchestrator
    orch.enroll_status = outcome
    bundle = await orch.add_device("dev-n")
    await orch.publish_model(built_model)
    async with make_agent(bundle, shard, tmp_path / "agent.db") as agent:
        if outcome is EnrollStatus.REJECTED:
            assert await agent.run_until() == "enrollment_rejected"
            assert "enrollment rejected" in caplog.text
        else:
            await orch.wait_until(lambda: bool(orch.statuses_of("dev-n")))
            status = orch.statuses_of("dev-n")[-1]
            assert (status.state, status.reason) == (AgentState.IDLE, "awaiting_approval")
            assert agent.finished is None
