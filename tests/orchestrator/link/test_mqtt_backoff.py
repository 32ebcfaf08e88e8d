"""The link reconnects with jittered exponential backoff on the injected clock: a broker that
appears while the link waits is reached only when the clock says the wait is over."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker, pick_free_port
from orchestrator.link.mqtt import MqttLink, MqttSettings
from tests.support.clock import FakeClock
from tests.support.waiting import until


async def _ignore(message: aiomqtt.Message) -> None:
    return None


@pytest.mark.integration
async def test_reconnects_when_the_backoff_on_the_clock_is_over(tmp_path: Path) -> None:
    clock = FakeClock()
    port = pick_free_port()
    settings = MqttSettings(host="127.0.0.1", port=port, username="orchestrator",
                            password="pw", client_id="orch", subscriptions=["fl/+/up/+/+"],
                            backoff_initial_s=1.0, backoff_max_s=8.0)
    link = MqttLink(settings, rng=random.Random(0), clock=clock)
    task = asyncio.create_task(link.run(_ignore))
    try:
        # nothing listens: the first attempt fails and the link sleeps on the clock
        await until(lambda: link.last_error is not None and clock.sleepers == 1)
        async with MosquittoBroker(tmp_path / "broker", port=port,
                                   orchestrator_password="pw"):
            # the broker is up, but the link is asleep until the clock moves (its sleep is
            # a future only advance() resolves, so this is not a race)
            assert not link.connected and link.connections == 0
            await clock.advance(1.0)  # the first wait: at most backoff_initial_s
            async with asyncio.timeout(20):
                await link.wait_connected()
            assert link.connections == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_each_failed_attempt_doubles_the_wait_up_to_the_cap() -> None:
    clock = FakeClock()
    settings = MqttSettings(host="127.0.0.1", port=pick_free_port(), username="o",
                            password="p", client_id="o", subscriptions=[],
                            backoff_initial_s=1.0, backoff_max_s=4.0)
    link = MqttLink(settings, rng=random.Random(1), clock=clock)
    task = asyncio.create_task(link.run(_ignore))
    try:
        for attempt in range(1, 6):
            await until(lambda n=attempt: len(clock.slept) == n and clock.sleepers == 1)
            await clock.advance(clock.slept[-1])  # exactly this wait: the next is later
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    caps = [1.0, 2.0, 4.0, 4.0, 4.0]
    # full jitter in the upper half: each wait in [cap / 2, cap]
    assert all(cap / 2 <= wait <= cap for wait, cap in zip(clock.slept[:5], caps, strict=True)), \
        clock.slept
