"""Operator access over MQTT against a running orchestrator and a real Mosquitto: enrollment of
an operator key, signed requests and replies on the MQTT 5 response topic, the retained fleet
summary, and every refusal (device key, bad signature, replay, foreign reply topic) audited."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from nacl.signing import SigningKey, VerifyKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision, write_private
from orchestrator.ops.client import OperatorClient, OperatorRefused, identity_path
from orchestrator.service import Orchestrator
from schemas import Bundle, Update, encode_params, pack, verify
from schemas.envelope import check_header, decode_body
from schemas.messages import OperatorRequest, OperatorResponse
from schemas.tensors import Codec, CodecSpec
from tests.support.service_config import FED
from tests.support.sim_device import random_delta

OPS = {"fleet_interval_s": 0.2}


@pytest.fixture
async def orch(make_config: Callable[..., Config]) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(make_config(ops=OPS), store_synchronous="NORMAL") as running:
        yield running


@pytest.fixture
def operator(tmp_path: Path, broker: MosquittoBroker
             ) -> Callable[..., Awaitable[Path]]:
    """``await operator(orch, "ops-1", role="operator") -> bundle path`` (as ``fedmq device
    add ID --role operator -o PATH`` writes it)."""
    async def add(orch: Orchestrator, name: str, *, role: str = "operator") -> Path:
        bundle = await provision(orch.store, orch.config, name,
                                 orchestrator_key=orch.public_key.hex(),
                                 role=role)  # type: ignore[arg-type]
        await broker.reload()
        path = tmp_path / f"{name}.bundle.json"
        write_private(path, bundle.to_json())
        return path
    return add


async def until(condition: Callable[[], Any], within: float = 10) -> None:
    """Poll ``condition`` (counters and metrics have no event to wait on)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"condition not met within {within}s")


async def raw_request(broker: MosquittoBroker, bundle: Bundle, payload: bytes, *,
                      reply_topic: str | None, listen: str | None = None,
                      correlation: bytes = b"c-1", within: float = 5) -> OperatorResponse | None:
    """Publish ``payload`` on the bundle's account's ops/request topic naming ``reply_topic``;
    the verified reply heard on ``listen`` (default: the reply topic), None if none came."""
    async with aiomqtt.Client(broker.host, broker.port, username=bundle.mqtt_username,
                              password=bundle.mqtt_password,
                              identifier=f"raw-{uuid.uuid4().hex[:6]}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        listen = listen or reply_topic
        if listen is not None:
            await client.subscribe(listen, qos=1)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if reply_topic is not None:
            props.ResponseTopic = reply_topic
        props.CorrelationData = correlation
        await client.publish(f"fl/{bundle.fed}/ops/request/{bundle.mqtt_username}", payload,
                             qos=1, properties=props)
        try:
            async with asyncio.timeout(within):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    opened = verify(message.payload,
                                    VerifyKey(bytes.fromhex(bundle.orchestrator_key)))
                    check_header(opened.header, fed=bundle.fed, sender="orchestrator",
                                 now_ms=int(time.time() * 1000), recipient=bundle.device_id)
                    assert message.properties is not None
                    assert getattr(message.properties, "CorrelationData", None) == correlation
                    return decode_body(opened, OperatorResponse)
        except TimeoutError:
            return None
    return None


def signed_request(key: SigningKey, bundle: Bundle, seq: int, command: str = "ping",
                   **args: Any) -> bytes:
    return pack(OperatorRequest("r-1", command, args), key=key, fed=bundle.fed,
                sender=bundle.device_id, seq=seq, ts_ms=int(time.time() * 1000))


async def test_operator_enrolls_and_reads_the_fleet(
    orch: Orchestrator, devices: Callable[..., Any], operator: Callable[..., Any],
) -> None:
    dev1 = await devices(orch, "dev-1")
    dev2 = await devices(orch, "dev-2")
    await dev1.status(battery_pct=81.0, charging=True, thermal="fair", model_version=0,
                      outbox_len=3)
    await dev2.status(state="offline", battery_pct=12.0, model_version=0)
    delta = random_delta(orch.params)
    tensors = encode_params(delta, CodecSpec(Codec.INT8), np.random.default_rng(0))
    seq, update = dev1.sign(Update(task_id="t", base_version=0, num_samples=10,
                                   tensors=tensors, device_class="gateway"), seal=True)
    await dev1.send(update)
    bad_seq, bad = dev1.update(delta, base_version=9)  # unknown version: rejected
    await dev1.send(bad)
    await dev1.wait_acks([seq, bad_seq])
    await until(lambda: orch.counters["status"] >= 2)

    path = await operator(orch, "ops-1")
    async with OperatorClient.open(path, timeout_s=5) as ops:
        fleet = await ops.request("fleet.status")
        assert (await ops.request("ping")) == {"pong": True, "version": 0}
    assert identity_path(path).stat().st_mode & 0o777 == 0o600
    assert fleet["federation"] == FED and fleet["version"] == 0
    rows = {r["device_id"]: r for r in fleet["devices"]}
    assert set(rows) == {"dev-1", "dev-2"}  # the operator itself is not a fleet device
    one, two = rows["dev-1"], rows["dev-2"]
    assert one["online"] is True and one["state"] == "idle"
    assert (one["battery_pct"], one["charging"], one["thermal"]) == (81.0, True, "fair")
    assert (one["model_version"], one["staleness"], one["outbox_len"]) == (0, 0, 3)
    assert (one["accepted"], one["rejected"], one["class"]) == (1, 1, "gateway")
    assert one["status"] == "active" and one["isolated"] is False
    assert two["online"] is False and two["state"] == "offline" and two["battery_pct"] == 12.0
    assert fleet["totals"] == {"devices": 2, "online": 1, "by_state": {"idle": 1, "offline": 1},
                               "outbox_backlog": 3, "anomalies": 0}
    # enrollment and the commands are on record
    enrolled = await orch.store.list_audit(event="enrolled", device="ops-1")
    assert len(enrolled) == 1
    commands = await orch.store.list_audit(event="operator_command", actor="ops-1")
    assert [c.detail["command"] for c in reversed(commands)] == ["fleet.status", "ping"]


async def test_a_second_session_reuses_the_enrolled_identity(
    orch: Orchestrator, operator: Callable[..., Any],
) -> None:
    path = await operator(orch, "ops-1")
    async with OperatorClient.open(path, timeout_s=5) as ops:
        first = ops.public_key
    async with OperatorClient.open(path, timeout_s=5) as ops:
        assert ops.public_key == first
        status = await ops.request("federation.status")
    assert status["version"] == 0 and status["buffer"] == {"fill": 0, "capacity": 3}
    assert len(await orch.store.list_audit(event="enrolled", device="ops-1")) == 1


async def test_a_device_key_is_refused_on_ops_request(
    orch: Orchestrator, operator: Callable[..., Any],
) -> None:
    # a device-role bundle: the key enrolls fine, but it may not issue operator commands
    path = await operator(orch, "dev-9", role="device")
    async with OperatorClient.open(path, timeout_s=5) as ops:
        with pytest.raises(OperatorRefused) as refused:
            await ops.request("fleet.status")
    assert refused.value.reason == "not_authorized"
    assert orch.counters["ops.rejected.not_authorized"] == 1
    (event,) = await orch.store.list_audit(event="rejected", device="dev-9")
    assert event.reason == "not_authorized" and event.detail["message"] == "ops_request"
    assert await orch.store.list_audit(event="operator_command") == []


async def test_a_bad_signature_is_refused_and_audited(
    orch: Orchestrator, operator: Callable[..., Any], broker: MosquittoBroker,
) -> None:
    path = await operator(orch, "ops-1")
    async with OperatorClient.open(path, timeout_s=5):
        pass  # enrolled
    bundle = Bundle.from_json(path.read_text())
    forged = signed_request(SigningKey.generate(), bundle, seq=10**15)
    answer = await raw_request(broker, bundle, forged, reply_topic=f"fl/{bundle.fed}/ops/reply/"
                                                                   "ops-1")
    assert answer is not None and not answer.ok and answer.error == "bad_signature"
    assert orch.counters["ops.rejected.bad_signature"] == 1
    (event,) = await orch.store.list_audit(event="rejected", device="ops-1")
    assert event.reason == "bad_signature" and event.actor == "orchestrator"
    assert await orch.store.list_audit(event="operator_command") == []


async def test_replays_and_foreign_reply_topics_are_refused(
    orch: Orchestrator, operator: Callable[..., Any], broker: MosquittoBroker,
) -> None:
    path_a = await operator(orch, "ops-a")
    path_b = await operator(orch, "ops-b")
    async with OperatorClient.open(path_b, timeout_s=5):
        pass
    bundle = Bundle.from_json(path_a.read_text())
    async with OperatorClient.open(path_a, timeout_s=5):
        pass  # enrolled; its key is in the identity file beside the bundle
    key = SigningKey(bytes.fromhex(json.loads(identity_path(path_a).read_text())["signing_key"]))
    reply = f"fl/{bundle.fed}/ops/reply/ops-a"
    request = signed_request(key, bundle, seq=10**16)
    first = await raw_request(broker, bundle, request, reply_topic=reply)
    assert first is not None and first.ok and first.result["pong"] is True
    again = await raw_request(broker, bundle, request, reply_topic=reply)
    assert again is not None and again.error == "duplicate"
    # naming ops-b's reply topic on ops-a's request topic: refused unread, never answered
    other = signed_request(key, bundle, seq=10**16 + 1)
    foreign = await raw_request(broker, bundle, other,
                                reply_topic=f"fl/{bundle.fed}/ops/reply/ops-b", listen=reply,
                                within=1)
    assert foreign is None
    # no response topic at all: nobody to answer, still on record
    assert await raw_request(broker, bundle, other, reply_topic=None, listen=reply,
                             within=1) is None
    await until(lambda: orch.counters["ops.rejected.bad_topic"] == 1)
    rejected = await orch.store.list_audit(event="rejected")
    assert sorted(e.reason or "" for e in rejected) == ["bad_topic", "duplicate",
                                                         "sender_mismatch"]
    assert {e.device for e in rejected} == {"ops-a"}  # each on record against the sender


async def test_an_operator_cannot_read_another_operators_replies(
    orch: Orchestrator, operator: Callable[..., Any], broker: MosquittoBroker,
) -> None:
    path_a = await operator(orch, "ops-a")
    path_b = await operator(orch, "ops-b")
    b = Bundle.from_json(path_b.read_text())
    async with aiomqtt.Client(broker.host, broker.port, username=b.mqtt_username,
                              password=b.mqtt_password, identifier="spy",
                              protocol=aiomqtt.ProtocolVersion.V5) as spy:
        await spy.subscribe(f"fl/{b.fed}/ops/reply/#", qos=1)
        async with OperatorClient.open(path_a, timeout_s=5) as ops:
            assert (await ops.request("ping"))["pong"] is True
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await anext(aiter(spy.messages))


async def test_unknown_commands_and_bad_arguments_are_answered(
    orch: Orchestrator, operator: Callable[..., Any],
) -> None:
    path = await operator(orch, "ops-1")
    async with OperatorClient.open(path, timeout_s=5) as ops:
        with pytest.raises(OperatorRefused) as unknown:
            await ops.request("fleet.reboot")
        with pytest.raises(OperatorRefused) as bad:
            await ops.request("audit.list", {"limit": "many"})
        events = await ops.request("audit.list", {"event": ["operator_command"], "limit": 5})
        devices = await ops.request("device.list", {"role": "operator"})
        privacy = await ops.request("privacy.report")
    assert unknown.value.reason == "unknown_command"
    assert bad.value.reason == "bad_args" and "limit" in str(bad.value)
    assert [e["detail"]["command"] for e in events] == [
        "audit.list", "audit.list", "fleet.reboot"]
    assert events[0]["detail"]["args"] == {"event": ["operator_command"], "limit": 5}
    assert [(d["device_id"], d["role"], d["status"]) for d in devices] == [
        ("ops-1", "operator", "active")]
    assert privacy == {"enabled": False, "epsilon": None, "devices": []}


async def test_the_fleet_summary_is_retained_signed_and_current(
    orch: Orchestrator, devices: Callable[..., Any], operator: Callable[..., Any],
) -> None:
    dev = await devices(orch, "dev-1")
    await dev.status(battery_pct=50.0, model_version=0, outbox_len=2)
    await until(lambda: orch.counters["status"] >= 1)
    # two more sweeps: at least one started after the heartbeat was stored
    before = orch.counters["ops.fleet_published"]
    await until(lambda: orch.counters["ops.fleet_published"] >= before + 2)
    path = await operator(orch, "ops-1")
    async with OperatorClient.open(path, timeout_s=5) as ops:
        summary = await ops.fleet_summary()
    assert [d["device_id"] for d in summary.devices] == ["dev-1"]
    assert summary.devices[0]["outbox_len"] == 2 and summary.devices[0]["online"] is True
    fed = summary.federation
    assert fed["version"] == 0 and fed["devices"]["online"] == 1
    assert fed["stopping"]["stopped"] is False and fed["buffer"]["capacity"] == 3
    # the same sweep refreshed the fleet gauges
    snap = orch.metrics.snapshot()
    assert snap["devices"]["online"] == 1 and snap["outbox_backlog"] == 2
    assert snap["model_version"] == 0
