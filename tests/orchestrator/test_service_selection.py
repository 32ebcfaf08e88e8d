"""Heartbeats and selection through the running service: tasks, deferrals, concurrency,
stragglers, and synchronous rounds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.service import Orchestrator
from schemas import AckOutcome, Codec, Defer, Task


async def _ask(dev: Any, **status: Any) -> Task | Defer:
    await dev.status(**status)
    answer = await dev.next("task")
    assert isinstance(answer, Task | Defer)
    return answer


async def test_idle_device_gets_a_task_and_weak_or_surplus_ones_are_deferred(
    make_config: Callable[..., Config], devices: Callable[..., Any], kit: Any,
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
        # a heartbeat while training is not an ask: no answer
        await a.status(state="training")
        await asyncio.sleep(0.3)
        assert a.down["task"].empty()

        # the update for the task frees its slot
        seq, update = a.update(kit.random_delta(orch.params), task_id=task.task_id)
        await a.send(update)
        assert (await a.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED
        assert orch.outstanding_tasks == 0


async def test_a_straggler_past_its_deadline_frees_its_slot(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    config = make_config(selection={"concurrency": 1}, training={"deadline_s": 0.5})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        a = await devices(orch, "slow")
        assert isinstance(await _ask(a), Task)
        for _ in range(50):  # housekeeping runs every 0.25 s
            if not orch.outstanding_tasks:
                break
            await asyncio.sleep(0.1)
        assert orch.outstanding_tasks == 0 and orch.counters["stragglers"] == 1
        b = await devices(orch, "next")
        assert isinstance(await _ask(b), Task)


@pytest.mark.parametrize("quorum", [2])
async def test_sync_rounds_wait_for_quorum_then_average(
    make_config: Callable[..., Config], devices: Callable[..., Any], kit: Any, quorum: int,
) -> None:
    config = make_config(aggregation={"mode": "sync", "quorum": quorum,
                                      "round_deadline_s": 30.0},
                         selection={"concurrency": 2, "retry_after_s": 0.2})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        workers = [await devices(orch, f"w{i}") for i in range(3)]
        answers = [await _ask(w) for w in workers]
        assert [type(a).__name__ for a in answers] == ["Task", "Task", "Defer"]
        for i, (w, task) in enumerate(zip(workers[:2], answers[:2], strict=True)):
            assert isinstance(task, Task)
            seq, update = w.update(kit.random_delta(orch.params, seed=i), task_id=task.task_id)
            await w.send(update)
            await w.wait_acks([seq])
            if i == 0:
                await asyncio.sleep(0.5)
                assert orch.version == 0  # one of two: the round waits
        async with asyncio.timeout(10):
            await orch.wait_for_version(1, published=True)
        (v1,) = [v for v in await orch.store.list_versions() if v.version == 1]
        assert v1.lineage["strategy"] == "fedavg" and len(v1.lineage["updates"]) == 2
        # the next round trains on version 1 (w2's deferral has expired by now)
        task = await _ask(workers[2])
        assert isinstance(task, Task) and task.model_version == 1
