"""Heartbeats and selection through the running service: tasks, deferrals, concurrency,
stragglers, and synchronous rounds. Deadlines run on a fake clock: time moves when the test
says so, and what must not happen is checked after a round trip that proves the service
handled the message (``barrier``), not after a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.service import Orchestrator
from schemas import AckOutcome, Codec, Defer, Task
from tests.support.clock import FakeClock
from tests.support.sim_device import random_delta
from tests.support.waiting import until


async def _ask(dev: Any, **status: Any) -> Task | Defer:
    await dev.status(**status)
    answer = await dev.next("task")
    assert isinstance(answer, Task | Defer)
    return answer


async def test_idle_device_gets_a_task_and_weak_or_surplus_ones_are_deferred(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    config = make_config(selection={"concurrency": 1, "retry_after_s": 5.0},
                         training={"epochs": 2, "codec": "topk", "topk_fraction": 0.1,
                                   "deadline_s": 60.0})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        a = await devices(orch, "a")
        task = await _ask(a, battery_pct=80.0)
        assert isinstance(task, Task)
        assert (task.model_version, task.epochs, task.codec.codec) == (0, 2, Codec.TOPK)
        assert task.seal and task.deadline_ms > 0
        assert orch.outstanding_tasks == 1

        b = await devices(orch, "b")
        low = await _ask(b, battery_pct=5.0)
        assert isinstance(low, Defer) and low.reason == "battery"
        assert 4000 <= low.retry_after_ms <= 6000
        c = await devices(orch, "c")
        busy = await _ask(c, battery_pct=5.0, charging=True)  # charging: battery is fine
        assert isinstance(busy, Defer) and busy.reason == "concurrency"
        hot = await devices(orch, "d")
        deferred = await _ask(hot, thermal="serious")
        assert isinstance(deferred, Defer) and deferred.reason == "thermal"
        # a heartbeat while training is not an ask: no answer (any would arrive before the
        # answer to the next message on the device's lane)
        await a.status(state="training")
        await a.barrier()
        assert a.down["task"].empty()

        # the update for the task frees its slot
        seq, update = a.update(random_delta(orch.params), task_id=task.task_id)
        await a.send(update)
        assert (await a.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED
        assert orch.outstanding_tasks == 0


async def test_a_straggler_past_its_deadline_frees_its_slot(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    clock = FakeClock()
    config = make_config(selection={"concurrency": 1}, training={"deadline_s": 60.0})
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        async with asyncio.timeout(20):
            await orch.wait_for_version(0, published=True)
        a = await devices(orch, "slow")
        assert isinstance(await _ask(a), Task)
        await clock.advance(59.0)  # housekeeping ran many times: not late yet
        b = await devices(orch, "next")
        assert (await _ask(b)).reason == "concurrency"  # type: ignore[union-attr]
        assert orch.outstanding_tasks == 1 and orch.counters["stragglers"] == 0
        await clock.advance(1.5)
        assert orch.outstanding_tasks == 0 and orch.counters["stragglers"] == 1
        await clock.advance(20.0)  # past b's retry time
        assert isinstance(await _ask(b), Task)


@pytest.mark.parametrize("quorum", [2])
async def test_sync_rounds_wait_for_quorum_then_average(
    make_config: Callable[..., Config], devices: Callable[..., Any], quorum: int,
) -> None:
    clock = FakeClock()
    config = make_config(aggregation={"mode": "sync", "quorum": quorum,
                                      "round_deadline_s": 30.0},
                         selection={"concurrency": 2, "retry_after_s": 0.2})
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        async with asyncio.timeout(20):
            await orch.wait_for_version(0, published=True)
        workers = [await devices(orch, f"w{i}") for i in range(3)]
        answers = [await _ask(w) for w in workers]
        assert [type(a).__name__ for a in answers] == ["Task", "Task", "Defer"]
        for i, (w, task) in enumerate(zip(workers[:2], answers[:2], strict=True)):
            assert isinstance(task, Task)
            seq, update = w.update(random_delta(orch.params, seed=i), task_id=task.task_id)
            await w.send(update)
            await w.wait_acks([seq])
        async with asyncio.timeout(20):
            await orch.wait_for_version(1)
        (v1,) = [v for v in await orch.store.list_versions() if v.version == 1]
        # both updates in the one version: the round waited for its quorum of two
        assert v1.lineage["strategy"] == "fedavg" and len(v1.lineage["updates"]) == 2
        await clock.advance(1.0)  # past w2's retry time (and publication's interval)
        async with asyncio.timeout(20):
            await orch.wait_for_version(1, published=True)
        # the next round trains on version 1
        task = await _ask(workers[2])
        assert isinstance(task, Task) and task.model_version == 1


async def test_a_round_closes_at_its_deadline_with_what_it_has(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    clock = FakeClock()
    config = make_config(aggregation={"mode": "sync", "quorum": 3, "round_deadline_s": 30.0},
                         selection={"concurrency": 3})
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        async with asyncio.timeout(20):
            await orch.wait_for_version(0, published=True)
        early, late, idle = [await devices(orch, name) for name in ("early", "late", "idle")]
        tasks = [await _ask(d) for d in (early, late, idle)]
        assert all(isinstance(t, Task) for t in tasks)

        async def submit(device: Any, task: Any, seed: int) -> None:
            seq, update = device.update(random_delta(orch.params, seed=seed),
                                        task_id=task.task_id)
            await device.send(update)
            await device.wait_acks([seq])

        await submit(early, tasks[0], 0)
        await clock.advance(29.0)  # before the deadline, short of quorum: the round waits
        await submit(late, tasks[1], 1)
        await clock.advance(1.5)  # past it: the round closes with the two it has
        async with asyncio.timeout(20):
            await orch.wait_for_version(1)
        (v1,) = [v for v in await orch.store.list_versions() if v.version == 1]
        assert len(v1.lineage["updates"]) == 2  # had it closed early, only 'early' would be in


async def test_an_empty_round_starts_again_at_its_deadline(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    clock = FakeClock()
    config = make_config(aggregation={"mode": "sync", "quorum": 1, "round_deadline_s": 30.0},
                         selection={"concurrency": 1})
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        async with asyncio.timeout(20):
            await orch.wait_for_version(0, published=True)
        first, second = await devices(orch, "first"), await devices(orch, "second")
        assert isinstance(await _ask(first), Task)
        assert (await _ask(second)).reason == "busy"  # type: ignore[union-attr]  # round full
        await clock.advance(29.0)
        assert orch.counters["rounds.restarted"] == 0
        await clock.advance(2.0)  # nothing came in: a fresh round on the same version
        await until(lambda: orch.counters["rounds.restarted"] == 1)
        assert orch.version == 0
        task = await _ask(second)  # the new round has room
        assert isinstance(task, Task) and task.model_version == 0
