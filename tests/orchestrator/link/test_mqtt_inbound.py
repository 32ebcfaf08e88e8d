"""Received QoS 0 messages cannot pile up in the link's memory: beyond a backlog they are
dropped before the router sees them, while QoS 1 messages always wait for their turn."""

from __future__ import annotations

import asyncio
import random

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.link.mqtt import QOS0_BACKLOG, MqttLink, MqttSettings
from tests.support.waiting import until

JUNK = 2000


@pytest.mark.integration
async def test_a_qos0_flood_is_dropped_beyond_the_backlog_and_qos1_still_arrives(
    broker: MosquittoBroker,
) -> None:
    await broker.add_user("dev-a", "pw-a")
    settings = MqttSettings(host=broker.host, port=broker.port, username="orchestrator",
                            password=broker.orchestrator_password, client_id="orch",
                            subscriptions=["fl/+/up/+/+"])
    link = MqttLink(settings, rng=random.Random(0))
    release = asyncio.Event()
    got: list[tuple[int, bytes]] = []

    async def handler(message: aiomqtt.Message) -> None:
        await release.wait()  # a router that has fallen behind
        assert isinstance(message.payload, bytes)
        got.append((message.qos, message.payload))

    task = asyncio.create_task(link.run(handler))
    try:
        await link.wait_connected()
        async with aiomqtt.Client(broker.host, broker.port, username="dev-a", password="pw-a",
                                  protocol=aiomqtt.ProtocolVersion.V5) as dev:
            for i in range(JUNK):
                await dev.publish("fl/f/up/dev-a/updates", b"junk-%d" % i, qos=0)
            for i in range(5):
                await dev.publish("fl/f/up/dev-a/status", b"status-%d" % i, qos=1)
            # the first message is in the handler, QOS0_BACKLOG wait, the rest are dropped
            await until(lambda: link.dropped_qos0 == JUNK - 1 - QOS0_BACKLOG)
            release.set()
            await until(lambda: sum(q == 1 for q, _ in got) == 5)
        assert [p for q, p in got if q == 1] == [b"status-%d" % i for i in range(5)]
        assert sum(q == 0 for q, _ in got) == 1 + QOS0_BACKLOG
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
