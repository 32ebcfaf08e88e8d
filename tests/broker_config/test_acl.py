"""The topic ACL in broker_config/acl, enforced by a real Mosquitto.

Mosquitto 2.0 grants every SUBSCRIBE and filters at delivery, and silently drops a denied
PUBLISH, so these tests assert on what is delivered, never on SUBACK codes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker

MqttClientFactory = Callable[..., aiomqtt.Client]

NOTHING_S = 0.5  # how long "nothing arrives" is observed
ARRIVES_S = 5.0  # upper bound for something that must arrive


def _fed() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def _receive(client: aiomqtt.Client, seconds: float, *, until: int = 0) -> list[str]:
    """Topics (with payloads) received within ``seconds``, or until ``until`` messages."""
    got: list[str] = []
    try:
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                got.append(f"{message.topic.value}={message.payload!r}")
                if until and len(got) >= until:
                    break
    except TimeoutError:
        pass
    return got


@pytest.fixture
async def fleet(broker: MosquittoBroker) -> MosquittoBroker:
    await broker.add_users({name: f"pw-{name}" for name in ("dev-a", "dev-b", "op-1", "op-2")})
    return broker


async def test_device_publishes_only_under_its_own_id(
    fleet: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    async with (
        mqtt_client(fleet, "orchestrator") as orch,
        mqtt_client(fleet, "dev-a") as dev_a,
    ):
        await orch.subscribe(f"fl/{fed}/up/#", qos=1)
        await dev_a.publish(f"fl/{fed}/up/dev-b/updates", b"spoofed", qos=1)
        await dev_a.publish(f"fl/{fed}/up/dev-a/updates", b"genuine", qos=1)
        first = await _receive(orch, ARRIVES_S, until=1)
        rest = await _receive(orch, NOTHING_S)
    assert first + rest == [f"fl/{fed}/up/dev-a/updates=b'genuine'"]


async def test_device_cannot_read_upstream_or_other_devices(
    fleet: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    async with (
        mqtt_client(fleet, "orchestrator") as orch,
        mqtt_client(fleet, "dev-a") as dev_a,
        mqtt_client(fleet, "dev-b") as dev_b,
    ):
        await orch.subscribe(f"fl/{fed}/up/#", qos=1)
        await dev_b.subscribe(f"fl/{fed}/down/dev-b/#", qos=1)
        for pattern in (f"fl/{fed}/up/#", f"fl/{fed}/down/dev-b/#", f"fl/{fed}/#", "#"):
            await dev_a.subscribe(pattern, qos=1)
        await dev_b.publish(f"fl/{fed}/up/dev-b/status", b"b-status", qos=1)
        await orch.publish(f"fl/{fed}/down/dev-b/task", b"b-task", qos=1)
        # Both messages were delivered to their rightful readers ...
        assert await _receive(orch, ARRIVES_S, until=1) == [
            f"fl/{fed}/up/dev-b/status=b'b-status'"
        ]
        assert await _receive(dev_b, ARRIVES_S, until=1) == [
            f"fl/{fed}/down/dev-b/task=b'b-task'"
        ]
        # ... and never to the other device, whatever it subscribed to.
        assert await _receive(dev_a, NOTHING_S) == []


async def test_device_reads_retained_model_and_its_own_downstream(
    fleet: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    async with mqtt_client(fleet, "orchestrator") as orch:
        await orch.publish(f"fl/{fed}/model", b"model-v1", qos=1, retain=True)
        await orch.publish(f"fl/{fed}/model/delta", b"delta-v1", qos=1, retain=True)
        async with mqtt_client(fleet, "dev-a") as dev_a:
            await dev_a.subscribe(f"fl/{fed}/model/#", qos=1)
            retained = await _receive(dev_a, ARRIVES_S, until=2)
            await dev_a.subscribe(f"fl/{fed}/down/dev-a/#", qos=1)
            await orch.publish(f"fl/{fed}/down/dev-a/task", b"a-task", qos=1)
            own = await _receive(dev_a, ARRIVES_S, until=1)
    assert sorted(retained) == [
        f"fl/{fed}/model/delta=b'delta-v1'",
        f"fl/{fed}/model=b'model-v1'",
    ]
    assert own == [f"fl/{fed}/down/dev-a/task=b'a-task'"]


async def test_device_cannot_replace_the_model_or_command_others(
    fleet: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    async with (
        mqtt_client(fleet, "orchestrator") as orch,
        mqtt_client(fleet, "dev-a") as dev_a,
        mqtt_client(fleet, "dev-b") as dev_b,
    ):
        await orch.publish(f"fl/{fed}/model", b"genuine-model", qos=1, retain=True)
        await dev_b.subscribe(f"fl/{fed}/down/dev-b/#", qos=1)
        await dev_a.publish(f"fl/{fed}/model", b"evil-model", qos=1, retain=True)
        await dev_a.publish(f"fl/{fed}/down/dev-b/control", b"evil-revoke", qos=1)
        assert await _receive(dev_b, NOTHING_S) == []
    # A device that connects later still gets the orchestrator's model.
    async with mqtt_client(fleet, "dev-b") as dev_b:
        await dev_b.subscribe(f"fl/{fed}/model", qos=1)
        assert await _receive(dev_b, ARRIVES_S, until=1) == [
            f"fl/{fed}/model=b'genuine-model'"
        ]


async def test_operator_reads_fleet_sends_requests_and_reads_only_own_replies(
    fleet: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    async with (
        mqtt_client(fleet, "orchestrator") as orch,
        mqtt_client(fleet, "op-1") as op_1,
        mqtt_client(fleet, "op-2") as op_2,
    ):
        await orch.publish(f"fl/{fed}/fleet", b"summary", qos=1, retain=True)
        await orch.subscribe(f"fl/{fed}/ops/request/+", qos=1)
        await op_1.subscribe(f"fl/{fed}/fleet", qos=1)
        assert await _receive(op_1, ARRIVES_S, until=1) == [f"fl/{fed}/fleet=b'summary'"]

        await op_1.subscribe(f"fl/{fed}/ops/reply/op-1/#", qos=1)
        await op_2.subscribe(f"fl/{fed}/ops/reply/#", qos=1)
        await op_2.subscribe(f"fl/{fed}/ops/request/+", qos=1)
        # only on its own request topic: one under op-2's name is dropped by the broker
        await op_1.publish(f"fl/{fed}/ops/request/op-2", b"forged", qos=1)
        await op_1.publish(f"fl/{fed}/ops/request", b"shared", qos=1)
        await op_1.publish(f"fl/{fed}/ops/request/op-1", b"status?", qos=1)
        assert await _receive(orch, ARRIVES_S, until=1) == [
            f"fl/{fed}/ops/request/op-1=b'status?'"
        ]
        await orch.publish(f"fl/{fed}/ops/reply/op-1/r1", b"reply", qos=1)
        assert await _receive(op_1, ARRIVES_S, until=1) == [
            f"fl/{fed}/ops/reply/op-1/r1=b'reply'"
        ]
        # op-2 sees neither the other operator's request nor its reply.
        assert await _receive(op_2, NOTHING_S) == []


async def test_wrong_or_unknown_credentials_are_refused(
    fleet: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    for username, password in (("dev-a", "wrong"), ("nobody", "pw"), ("orchestrator", "")):
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with mqtt_client(fleet, username, password):
                pass
        assert refused.value.rc == 135  # Not authorized


async def test_removed_user_is_refused_and_dropped(
    fleet: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = _fed()
    async with mqtt_client(fleet, "dev-a") as connected:
        assert await fleet.remove_user("dev-a") is True
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with mqtt_client(fleet, "dev-a", "pw-dev-a"):
                pass
        assert refused.value.rc == 135
        # The reload also ends the session that was already open.
        with pytest.raises(aiomqtt.MqttError):
            async with asyncio.timeout(ARRIVES_S):
                while True:
                    await connected.publish(f"fl/{fed}/up/dev-a/status", b"alive", qos=1)
                    await asyncio.sleep(0.05)
    assert await fleet.remove_user("dev-a") is False


async def test_user_added_while_running_can_connect(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    password = await broker.add_user("dev-new")
    assert broker.credentials["dev-new"] == password
    async with mqtt_client(broker, "dev-new") as client:
        await client.publish(f"fl/{_fed()}/up/dev-new/status", b"hello", qos=1)
