"""Faults while a real fleet trains: SIGKILL the orchestrator, SIGKILL agents mid-flush,
restart the broker — then, from durable state alone, every update an agent produced is
counted exactly once, still in its outbox, or rejected with a reason (``ChaosSite.check`` in
:mod:`tests.support.chaos`).

The quick form runs in ``make test`` (two kills of each kind, a broker restart and a short
partition); the ``chaos`` form (``make chaos``) does 20+ kills of each kind.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from tests.support.chaos import ChaosSite, Ledger


async def _kill_trials(site: ChaosSite, *, orchestrator_kills: int, agent_kills: int,
                       broker_restarts: int, seed: int, partition_s: float = 0.0) -> Ledger:
    """The faults in random order while the fleet trains; with ``partition_s``, agent 0 is
    also cut off for that long (the long partition has its own test)."""
    rng = random.Random(seed)
    await site.start_orchestrator()
    await site.start_fleet()
    await site.wait(lambda: site.versions() >= 1, 90, "first version")
    events = (["orchestrator"] * orchestrator_kills + ["agent"] * agent_kills
              + ["broker"] * broker_restarts)
    rng.shuffle(events)
    busy_kills = 0
    for event in events:
        await asyncio.sleep(rng.uniform(0.2, 1.2))  # let the fleet train
        if event == "orchestrator":
            await site.kill_orchestrator()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            # sometimes killed again during start-up, before it reports ready
            await site.start_orchestrator(wait=rng.random() > 0.2)
        elif event == "agent":
            i = rng.randrange(site.devices)
            busy_kills += await site.kill_agent(i)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            await site.start_agent(i)
        else:
            await site.restart_broker(rng.uniform(0.2, 1.0))
    if partition_s:
        site.links[0].cut()
        versions = site.versions()
        await asyncio.sleep(partition_s)
        assert site.agent_alive(0)
        site.links[0].heal()
        await site.wait(lambda: site.versions() > versions, 60, "versions after the partition")
    # a clean end: the orchestrator comes up for good, every outbox drains
    await site.kill_orchestrator()
    await site.start_orchestrator()
    await site.wait(site.settled, 120, "outboxes drained")
    for i in range(site.devices):
        await site.stop_agent(i)
    await site.stop_orchestrator()
    ledger = await site.check()
    assert site.kills["orchestrator"] == orchestrator_kills + 1
    assert site.kills["agent"] == agent_kills
    assert ledger.counted_once >= 3 and ledger.versions >= 1
    print(f"kills {site.kills}, agent kills with a non-empty outbox {busy_kills}, {ledger}")
    return ledger


async def test_kills_quick(chaos_site: Callable[..., Awaitable[ChaosSite]]) -> None:
    site = await chaos_site(devices=3, seed=1)
    await _kill_trials(site, orchestrator_kills=2, agent_kills=2, broker_restarts=1, seed=1,
                       partition_s=3.0)


@pytest.mark.chaos
async def test_kills_long(chaos_site: Callable[..., Awaitable[ChaosSite]]) -> None:
    site = await chaos_site(devices=4, seed=2)
    await _kill_trials(site, orchestrator_kills=22, agent_kills=22, broker_restarts=4, seed=2)
