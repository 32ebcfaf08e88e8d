"""Broker identity: an account can connect only under its own client id.

The broker configs set ``use_username_as_clientid``, so whatever id a client asks for, its
session is its username's. Without it a stolen device credential could connect as
``fedmq-orchestrator-{fed}`` (or as another device), close that connection and, with a
clean start, discard the orchestrator's persistent session and the updates queued in it.
Each test here fails with the setting removed from broker_config/dev.conf.in.

No test waits for something not to happen: a takeover would close the old connection while
the broker handles the new CONNECT, so once the newcomer holds its CONNACK a QoS 1 round trip
on the old connection proves it is still open.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.broker import MosquittoBroker
from schemas.topics import Topics

MqttClientFactory = Callable[..., aiomqtt.Client]


def _fed() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _persistent(broker: MosquittoBroker, mqtt_client: MqttClientFactory, username: str,
                identifier: str, *, clean_start: bool = False) -> aiomqtt.Client:
    expiry = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    expiry.SessionExpiryInterval = 3600
    return mqtt_client(broker, username, identifier=identifier, clean_start=clean_start,
                       properties=expiry)


async def _round_trip(client: aiomqtt.Client, topic: str) -> bytes:
    """Publish QoS 1 to ``topic`` (which ``client`` is subscribed to) and receive it back."""
    marker = uuid.uuid4().hex.encode()
    await client.publish(topic, marker, qos=1)
    async with asyncio.timeout(10):
        async for message in client.messages:
            if message.payload == marker:
                return marker
    raise AssertionError("unreachable")


async def _next_payload(client: aiomqtt.Client) -> bytes:
    async with asyncio.timeout(10):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            return message.payload
    raise AssertionError("unreachable")


async def test_a_device_asking_for_the_orchestrators_client_id_does_not_close_it(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    orch_id = Topics(fed).orchestrator_client_id
    await broker.add_user("dev-a", "pw-a")
    async with _persistent(broker, mqtt_client, "orchestrator", orch_id) as orch:
        await orch.subscribe(f"fl/{fed}/up/#", qos=1)
        async with mqtt_client(broker, "dev-a", identifier=orch_id) as thief:
            await thief.publish(f"fl/{fed}/up/dev-a/updates", b"from-the-thief", qos=1)
            assert await _next_payload(orch) == b"from-the-thief"
            await _round_trip(orch, f"fl/{fed}/up/orchestrator/probe")
    log = broker.log_text()
    assert f"as {orch_id}" not in log
    assert "as dev-a (" in log


async def test_the_orchestrator_session_and_its_queue_survive_a_clean_start_under_its_id(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    orch_id = Topics(fed).orchestrator_client_id
    await broker.add_user("dev-a", "pw-a")
    async with _persistent(broker, mqtt_client, "orchestrator", orch_id) as orch:
        await orch.subscribe(f"fl/{fed}/up/#", qos=1)
    async with mqtt_client(broker, "dev-a", identifier="dev-a-1") as dev:  # orchestrator away
        await dev.publish(f"fl/{fed}/up/dev-a/updates", b"queued", qos=1)
    # A clean start under the orchestrator's id would discard its session and queue.
    async with _persistent(broker, mqtt_client, "dev-a", orch_id, clean_start=True):
        pass
    async with _persistent(broker, mqtt_client, "orchestrator", orch_id) as orch:
        assert await _next_payload(orch) == b"queued"


async def test_a_device_asking_for_another_devices_client_id_does_not_close_it(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    await broker.add_users({"dev-a": "pw-a", "dev-b": "pw-b"})
    async with mqtt_client(broker, "dev-a", identifier="dev-a") as victim:
        await victim.subscribe(f"fl/{fed}/down/dev-a/#", qos=1)
        async with mqtt_client(broker, "dev-b", identifier="dev-a"):
            async with mqtt_client(broker, "orchestrator") as orch:
                await orch.publish(f"fl/{fed}/down/dev-a/control", b"still-here", qos=1)
            assert await _next_payload(victim) == b"still-here"


async def test_the_orchestrator_account_cannot_take_a_devices_session_either(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    await broker.add_user("dev-a", "pw-a")
    async with _persistent(broker, mqtt_client, "dev-a", "dev-a") as device:
        await device.subscribe(f"fl/{fed}/down/dev-a/#", qos=1)
        async with mqtt_client(broker, "orchestrator", identifier="dev-a") as orch:
            await orch.publish(f"fl/{fed}/down/dev-a/control", b"for-the-device", qos=1)
            assert await _next_payload(device) == b"for-the-device"


async def test_a_legitimate_reconnect_resumes_its_own_session(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    """The same account reconnecting (a new process after a crash, any client id) replaces
    its old connection and finds its session with the messages queued meanwhile."""
    fed = _fed()
    await broker.add_user("dev-a", "pw-a")
    async with _persistent(broker, mqtt_client, "dev-a", "fedmq-dev-a") as device:
        await device.subscribe(f"fl/{fed}/down/dev-a/#", qos=1)
    async with mqtt_client(broker, "orchestrator") as orch:
        await orch.publish(f"fl/{fed}/down/dev-a/task", b"queued-task", qos=1)
    async with _persistent(broker, mqtt_client, "dev-a", "another-id") as device:
        assert await _next_payload(device) == b"queued-task"


async def test_a_second_connection_of_one_account_replaces_the_first(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    """The price of the rule: one account holds one connection. Operators and test spies
    therefore use accounts of their own."""
    await broker.add_user("dev-a", "pw-a")
    async with mqtt_client(broker, "dev-a", identifier="first"):
        async with mqtt_client(broker, "dev-a", identifier="second"):
            pass
    log = broker.log_text()
    assert "Client dev-a already connected, closing old connection." in log
