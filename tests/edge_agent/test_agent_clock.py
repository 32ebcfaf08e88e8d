"""Time-driven behaviour on a fake clock: timeouts, the training stop check's probe interval,
loop restarts, heartbeat interval, enroll retry, ack resend timeouts and reconnect backoff.

Nothing here waits for real time to pass: the clock moves only when a test advances it, and
only once the agent is seen waiting on it (``FakeClock.sleeper``)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from edge_agent.activity import Activity
from edge_agent.agent import Agent
from edge_agent.clock import SystemClock, as_clock, wait_for
from edge_agent.data import LocalData
from edge_agent.probes import DeviceState
from edge_agent.shared import Shutdown
from edge_agent.supervision import keep_running
from edge_agent.worker import StopCheck
from orchestrator.broker import pick_free_port
from orchestrator.models import BuiltModel
from schemas import AgentState, Bundle, ControlAction, Task, Thermal
from tests.support.agent_clock import FakeClock, Sleeper
from tests.support.fake_orchestrator import FakeOrchestrator

# -- the clock itself and the pieces that use it, without I/O -----------------------------------


async def test_wait_for_times_out_only_when_the_clock_says_so(fake_clock: FakeClock) -> None:
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_for(fake_clock, event.wait(), 5.0))
    sleeper = await fake_clock.sleeper()
    assert sleeper.duration == 5.0
    await fake_clock.advance(4.999)
    assert not waiting.done()
    await fake_clock.advance(0.001)
    with pytest.raises(TimeoutError):
        await waiting
    # done in time: the result, and the timer is gone
    event.set()
    assert await wait_for(fake_clock, event.wait(), 5.0) is True
    assert not fake_clock.sleepers()


def test_a_bare_wall_function_is_still_accepted_as_the_agent_clock() -> None:
    clock = as_clock(lambda: 1234.5)
    assert isinstance(clock, SystemClock) and clock.wall() == 1234.5
    fake = FakeClock()
    assert as_clock(fake) is fake


class _Probe:
    def __init__(self) -> None:
        self.reads = 0
        self.state = DeviceState(battery_pct=80.0)

    def read(self) -> DeviceState:
        self.reads += 1
        return self.state

    def set_training(self, training: bool) -> None:
        pass


@dataclasses.dataclass
class _Holder:
    current: Activity = dataclasses.field(default_factory=Activity)


def _task(**fields: Any) -> Task:
    return Task(**({"task_id": "t", "model_version": 1, "epochs": 1, "batch_size": 8,
                    "lr": 0.1, "min_battery_pct": 20.0, "max_thermal": Thermal.SERIOUS}
                   | fields))


def test_the_stop_check_reads_the_probe_at_most_once_per_interval(
        fake_clock: FakeClock) -> None:
    probe, holder, shutdown = _Probe(), _Holder(), Shutdown()
    check = StopCheck(_task(), shutdown=shutdown, activity=holder, probe=probe,
                      clock=fake_clock, interval_s=0.25)
    assert [check() for _ in range(100)] == [False] * 100
    assert probe.reads == 0  # the interval has not passed on the clock
    fake_clock.now += 0.25
    assert not check() and probe.reads == 1
    assert not check() and probe.reads == 1
    probe.state = DeviceState(battery_pct=10.0)
    fake_clock.now += 0.2
    assert not check() and probe.reads == 1
    fake_clock.now += 0.05
    assert check() and check.cause == "battery_low" and probe.reads == 2


@pytest.mark.parametrize(("stop", "cause"), [("order", "stopped"), ("shutdown", "shutdown")])
def test_the_stop_check_stops_at_once_on_an_order_or_shutdown(
        fake_clock: FakeClock, stop: str, cause: str) -> None:
    probe, holder, shutdown = _Probe(), _Holder(), Shutdown()
    check = StopCheck(_task(), shutdown=shutdown, activity=holder, probe=probe,
                      clock=fake_clock, interval_s=0.25)
    assert not check()
    if stop == "order":
        after = holder.current.on_order(ControlAction.STOP)
        assert after is not None
        holder.current = after
    else:
        shutdown.request()
    assert check() and check.cause == cause and probe.reads == 0


async def test_a_failed_loop_restarts_after_the_pause_on_the_clock(
        fake_clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    finished = asyncio.Event()

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"bad moment {len(runs)}")
        finished.set()

    runner = asyncio.create_task(keep_running("demo", loop, clock=fake_clock,
                                              logger=logging.getLogger("test.keep")))
    for attempt in (1, 2):
        sleeper = await fake_clock.sleeper()
        assert sleeper.duration == 1.0 and runs == list(range(attempt))
        await fake_clock.advance(1.0)
    await asyncio.wait_for(finished.wait(), 10)
    await runner  # a loop that returns ends the supervision
    assert runs == [0, 1, 2]
    assert caplog.text.count("demo loop failed; restarting it") == 2


# -- through a running agent, a real broker and the fake orchestrator ---------------------------


def _interval(seconds: float) -> Callable[[Sleeper], bool]:
    return lambda s: s.duration == pytest.approx(seconds)


def _status_stamped(orch: FakeOrchestrator, ts_ms: int,
                    state: AgentState | None = None) -> Callable[[], bool]:
    """The orchestrator holds a status signed at ``ts_ms`` (of ``state``, when given)."""
    return lambda: any(h.ts_ms == ts_ms and state in (None, s.state)
                       for _, h, s in orch.statuses)


def _batches(orch: FakeOrchestrator, count: int) -> Callable[[], bool]:
    return lambda: len(orch.batches) == count


async def test_heartbeats_come_every_interval_of_clock_time(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
    fake_clock: FakeClock,
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-hb")
    await orch.publish_model(built_model)
    config = dataclasses.replace(agent_config, heartbeat_s=30.0, link_poll_s=3600.0)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config,
                          clock=fake_clock) as agent:
        await ready(agent, orch)
        beats: list[int] = []
        for _ in range(3):
            sleeper = await fake_clock.sleeper(_interval(30.0))
            assert sleeper.remaining == pytest.approx(30.0)  # armed at the last status
            await fake_clock.advance(sleeper.remaining)
            now = fake_clock.wall_ms()
            await orch.wait_until(_status_stamped(orch, now, AgentState.IDLE))
            beats.append(now)
    assert [b - a for a, b in itertools.pairwise(beats)] == [30_000, 30_000]


async def test_an_unanswered_enroll_is_sent_again_after_the_retry_interval(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
    fake_clock: FakeClock,
) -> None:
    orch = orchestrator
    orch.ignore_enrolls = 1
    bundle = await orch.add_device("dev-er")
    config = dataclasses.replace(agent_config, enroll_retry_s=5.0, link_poll_s=3600.0)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config,
                          clock=fake_clock) as agent:
        await orch.wait_until(lambda: len(orch.enroll_headers) == 1)
        # events on the way (a model arrives) must not make it enroll again early
        await orch.publish_model(built_model)
        await agent.wait_until(lambda a: a.model_version == 1, 10)
        sleeper = await fake_clock.sleeper(_interval(5.0))
        await fake_clock.advance(sleeper.remaining - 0.001)
        assert sleeper.live  # still waiting for the answer
        await fake_clock.advance(0.001)
        await orch.wait_until(lambda: len(orch.enroll_headers) == 2)
        await ready(agent, orch)
    first, second = orch.enroll_headers
    assert second.ts_ms - first.ts_ms == 5_000
    assert orch.enrolls == 1 and agent.stats.enrolls_sent == 2


async def test_unacked_updates_are_sent_again_after_doubling_timeouts(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
    fake_clock: FakeClock,
) -> None:
    orch = orchestrator
    orch.ack_updates = False
    bundle = await orch.add_device("dev-ack")
    await orch.publish_model(built_model)
    config = dataclasses.replace(agent_config, ack_timeout_s=10.0, max_ack_timeout_s=25.0,
                                 link_poll_s=3600.0)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config,
                          clock=fake_clock) as agent:
        await ready(agent, orch)
        await orch.send_task("dev-ack", epochs=1)
        await orch.wait_until(lambda: len(orch.batches) == 1)
        sent_ms = [fake_clock.wall_ms()]
        for timeout in (10.0, 20.0, 25.0):  # doubling, then capped
            sleeper = await fake_clock.sleeper(_interval(timeout))
            await fake_clock.advance(sleeper.remaining)
            await orch.wait_until(_batches(orch, len(sent_ms) + 1))
            sent_ms.append(fake_clock.wall_ms())
        await agent.wait_until(lambda a: a.stats.batches_sent == 4, 10)
        rows = await agent.outbox.rows()
    assert len(rows) == 1 and rows[0].attempts == 4
    assert rows[0].last_sent_ms == sent_ms[-1]
    assert [b - a for a, b in itertools.pairwise(sent_ms)] == [10_000, 20_000,
                                                                          25_000]
    assert len({seq for batch in orch.batches for seq in batch}) == 1


async def test_reconnect_delays_run_on_the_agent_clock(
    shard: LocalData, tmp_path: Path, fake_clock: FakeClock, agent_config: Any,
) -> None:
    bundle = Bundle(device_id="dev-off", fed="fedoff", broker_host="127.0.0.1",
                    broker_port=pick_free_port(), mqtt_username="dev-off", mqtt_password="pw",
                    orchestrator_key=bytes(SigningKey.generate().verify_key).hex(),
                    enroll_secret="22" * 32)
    config = dataclasses.replace(agent_config, backoff_base_s=0.5, backoff_cap_s=4.0)
    async with Agent(bundle, shard, tmp_path / "agent.db", config=config, clock=fake_clock,
                     backoff_rng=random.Random(7)) as agent:
        for attempt in range(6):
            sleeper = await fake_clock.sleeper()
            assert agent.session.backoff.attempt == attempt + 1
            assert 0 <= sleeper.duration <= min(4.0, 0.5 * 2**attempt)
            await fake_clock.advance(sleeper.remaining)
        assert not agent.session.connected and agent.session.connections == 0
    delays = fake_clock.durations
    assert len(delays) >= 6 and max(delays[3:6]) > 0.5  # it grew past the base
