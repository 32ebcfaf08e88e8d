"""Hostile peers over a real broker, with a raw MQTT client and hand-built messages.

Each case starts from a valid update captured off the broker (the attacker's view), changes
it the way an attacker would, re-signs it where the attacker holds a key (a compromised
device holds its own), and publishes it with a plain aiomqtt client. Then, per case:

- the refusal is counted under its *specific* reason (``orchestrator.counters`` and the
  ledger or audit log), so removing that one protection makes the case fail — with
  ``aggregation.k = 1`` any hostile update that slipped through would also make a new version;
- the model is unchanged (same version, same parameter digest);
- the orchestrator is still up: a witness device's valid update is accepted afterwards.

Operator commands signed by a device key are not covered here: the operator path
(``orchestrator/ops.py``) is being built separately.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import msgpack
import numpy as np
import pytest
import zstandard
from nacl.signing import SigningKey

from orchestrator.broker import MosquittoBroker, PasswordFile
from orchestrator.config import Config
from orchestrator.devices.registry import bump_generation
from orchestrator.service import Orchestrator
from schemas import AckOutcome, Codec, CodecSpec, enroll_mac
from schemas.topics import Topics
from tests.support.observer import observer
from tests.support.raw_wire import RawWire, params_digest
from tests.support.sim_device import SimDevice, random_delta
from tests.support.waiting import until

FLOAT32 = CodecSpec(Codec.FLOAT32)
MAX_UPDATE_BYTES = 16 * 1024
MAX_BODY_BYTES = 256 * 1024


@dataclass
class Arena:
    """A running orchestrator (k = 1), a victim device whose valid update was captured off
    the broker, a witness device, and a spy subscribed to every upstream topic."""

    orch: Orchestrator
    broker: MosquittoBroker
    victim: SimDevice
    witness: SimDevice
    captured: bytes
    """The victim's valid update envelope, exactly as it crossed the broker."""
    spied: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def fed(self) -> str:
        return str(self.orch.config.federation.id)

    def topic(self, device: str, kind: str = "updates") -> str:
        return f"fl/{self.fed}/up/{device}/{kind}"

    def fresh_seq(self) -> int:
        self.victim.seq += 1
        return int(self.victim.seq)

    def raw_client(self, device: SimDevice) -> aiomqtt.Client:
        """A plain MQTT client with ``device``'s broker credentials."""
        return aiomqtt.Client(
            self.broker.host, self.broker.port, username=device.bundle.mqtt_username,
            password=device.bundle.mqtt_password, identifier=f"raw-{uuid.uuid4().hex[:8]}",
            protocol=aiomqtt.ProtocolVersion.V5)

    async def publish_raw(self, topic: str, payload: bytes,
                          device: SimDevice | None = None) -> None:
        async with self.raw_client(device or self.victim) as client:
            await client.publish(topic, payload, qos=1)


def model_state(orch: Orchestrator) -> tuple[int, str]:
    return orch.version, params_digest(orch.params)


@pytest.fixture
async def arena(make_config: Callable[..., Config],
                devices: Callable[..., Awaitable[SimDevice]], broker: MosquittoBroker
                ) -> AsyncIterator[Arena]:
    config = make_config(aggregation={"k": 1, "max_staleness": 50},
                         ingest={"max_update_bytes": MAX_UPDATE_BYTES,
                                 "max_body_bytes": MAX_BODY_BYTES})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch, observer(
            broker) as spy:
        await spy.subscribe(f"fl/{config.federation.id}/up/#", qos=1)
        spied: list[tuple[str, bytes]] = []

        async def listen() -> None:
            async for message in spy.messages:
                spied.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]

        listener = asyncio.create_task(listen())
        victim = await devices(orch, "dev-victim")
        witness = await devices(orch, "dev-witness")
        # a valid plain update from the victim, captured as it crosses the broker
        seq, entry = victim.update(random_delta(orch.params), codec=FLOAT32, seal=False)
        await victim.send(entry)
        assert (await victim.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED
        await until(lambda: any(t.endswith("/dev-victim/updates") for t, _ in spied))
        (batch,) = [p for t, p in spied if t.endswith("/dev-victim/updates")]
        (captured,) = RawWire.entries(batch)
        async with asyncio.timeout(10):
            await orch.wait_for_version(1)
        try:
            yield Arena(orch, broker, victim, witness, captured, spied)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


async def expect_refused(arena: Arena, counter: str, send: Callable[[], Awaitable[None]], *,
                         ledger_reason: str | None) -> None:
    """Send the hostile message(s), then check the three promises of the module docstring."""
    orch = arena.orch
    before = model_state(orch)
    count = orch.counters[counter]
    accepted = orch.counters["accepted"]
    await send()
    try:
        await until(lambda: orch.counters[counter] > count)
    except TimeoutError:
        raise AssertionError(f"{counter} not counted: {dict(orch.counters)}") from None
    assert orch.counters["accepted"] == accepted
    if ledger_reason is not None:
        rows = await orch.store.ledger(sender="dev-victim", reason=ledger_reason)
        assert rows, f"no ledger row with reason {ledger_reason!r}"
        audited = {a.reason for a in await orch.store.list_audit(device="dev-victim")}
        assert ledger_reason in audited
    assert model_state(orch) == before
    # still up and still judging: the witness's valid update makes the next version
    seq, ok = arena.witness.update(random_delta(orch.params, seed=7), codec=FLOAT32,
                                   base_version=orch.version)
    await arena.witness.send(ok)
    assert (await arena.witness.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED
    async with asyncio.timeout(10):
        await orch.wait_for_version(before[0] + 1)


# -- mutations of the captured update -------------------------------------------------------------


def resigned(arena: Arena, *, key: SigningKey | None = None,
             body: Callable[[dict[str, Any]], dict[str, Any] | bytes] | None = None,
             raw_body: bytes | None = None, **header: Any) -> bytes:
    """The captured update with a fresh seq, ``header`` changes and a new body, signed with
    ``key`` (default: the victim's own key — a compromised device)."""
    opened, _ = RawWire.open(arena.captured)
    changed = {**opened, "seq": arena.fresh_seq(), "ts_ms": int(time.time() * 1000)}
    if body is not None:
        changed = RawWire.with_body(changed, body(RawWire.body(opened)))
    if raw_body is not None:
        changed["body"] = raw_body
    changed.update(header)
    return bytes(RawWire.sign(changed, key or arena.victim.key))


def _tensor_values(value: float) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(body: dict[str, Any]) -> dict[str, Any]:
        first = body["tensors"][0]
        n = int(np.prod(first["shape"]))
        first["data"] = np.full(n, value, np.float32).tobytes()
        return body
    return change


def _wrong_shape(body: dict[str, Any]) -> dict[str, Any]:
    first = body["tensors"][0]
    first["shape"] = [2, 2]
    first["data"] = np.zeros(4, np.float32).tobytes()
    return body


def _incompressible(n: int) -> bytes:
    # checked before anything is decompressed: the body need not even be a zstd frame
    return np.random.default_rng(0).bytes(n)


def _zstd_bomb() -> bytes:
    """A frame without a declared size that expands to 64x the body cap."""
    out = zstandard.ZstdCompressor().compressobj()
    chunk = b"\0" * (1 << 20)
    parts = [out.compress(chunk) for _ in range(64 * MAX_BODY_BYTES >> 20)]
    return b"".join([*parts, out.flush()])


# each case: (counter, ledger reason, mutation of the captured update signed by the victim)
ENTRY_CASES: dict[str, tuple[str, str | None, Callable[[Arena], bytes]]] = {
    "forged_signature": ("rejected.bad_signature", "bad_signature",
                         lambda a: resigned(a, key=SigningKey.generate())),
    "tampered_after_signing": ("rejected.bad_signature", "bad_signature",
                               lambda a: _tamper(a.captured)),
    "another_federation": ("rejected.wrong_federation", "wrong_federation",
                           lambda a: resigned(a, fed="otherfed")),
    "another_sender_in_header": ("rejected.sender_mismatch", "sender_mismatch",
                                 lambda a: resigned(a, sender="dev-witness")),
    "future_timestamp": ("rejected.future_timestamp", "future_timestamp",
                         lambda a: resigned(a, ts_ms=int(time.time() * 1000) + 3600_000)),
    "oversized_entry": ("rejected.too_large", "too_large",
                        lambda a: resigned(
                            a, raw_body=_incompressible(MAX_UPDATE_BYTES + 1))),
    "zstd_bomb": ("rejected.decompressed_too_large", "decompressed_too_large",
                  lambda a: resigned(a, raw_body=_zstd_bomb())),
    "not_zstd": ("rejected.bad_compression", "bad_compression",
                 lambda a: resigned(a, raw_body=b"\x00" * 64)),
    "malformed_msgpack_body": ("rejected.malformed", "malformed",
                               lambda a: resigned(a, body=lambda b: b"\xc1\xc1\x93\x01")),
    "body_of_wrong_shape": ("rejected.invalid_field", "invalid_field",
                            lambda a: resigned(a, body=lambda b: {**b, "tensors": 5})),
    "wrong_tensor_shape": ("rejected.shape_mismatch", "shape_mismatch",
                           lambda a: resigned(a, body=_wrong_shape)),
    "nan_values": ("rejected.non_finite", "non_finite",
                   lambda a: resigned(a, body=_tensor_values(float("nan")))),
    "inf_values": ("rejected.non_finite", "non_finite",
                   lambda a: resigned(a, body=_tensor_values(float("inf")))),
    "unknown_base_version": ("rejected.unknown_version", "unknown_version",
                             lambda a: resigned(a, body=lambda b: {**b,
                                                                         "base_version": 99})),
}


def _tamper(envelope: bytes) -> bytes:
    signed, signature = msgpack.unpackb(envelope, raw=False)
    flipped = bytearray(signed)
    flipped[-1] ^= 0x01  # the last byte of the body: signature no longer matches
    return msgpack.packb([bytes(flipped), signature], use_bin_type=True)


@pytest.mark.parametrize("case", sorted(ENTRY_CASES))
async def test_hostile_update_is_refused_for_its_reason(
    case: str, arena: Arena,
) -> None:
    counter, reason, build = ENTRY_CASES[case]
    payload = RawWire.batch(build(arena))
    await expect_refused(
        arena, counter,
        lambda: arena.publish_raw(arena.topic("dev-victim"), payload),
        ledger_reason=reason)


async def test_malformed_batch_is_refused_whole(arena: Arena) -> None:
    await expect_refused(
        arena, "rejected.malformed",
        lambda: arena.publish_raw(arena.topic("dev-victim"), b"\x93\xc1\xff not msgpack"),
        ledger_reason="malformed")


async def test_replay_within_the_window_is_a_duplicate_never_applied_twice(
    arena: Arena,
) -> None:
    await expect_refused(
        arena, "duplicate",
        lambda: arena.publish_raw(arena.topic("dev-victim"), RawWire.batch(arena.captured)),
        ledger_reason=None)
    seq = RawWire.open(arena.captured)[0]["seq"]
    rows = await arena.orch.store.ledger(sender="dev-victim")
    assert [r.seq for r in rows].count(seq) == 1


async def test_replay_below_the_window_is_rejected(
    arena: Arena,
) -> None:
    # the victim moves far ahead (a valid update 5000 seqs on): the captured seq falls out
    jump = arena.victim.seq + 5000
    arena.victim.seq = jump
    _, ahead = arena.victim.update(random_delta(arena.orch.params, seed=3), codec=FLOAT32,
                                   base_version=arena.orch.version, seq=jump)
    await arena.victim.send(ahead)
    await arena.victim.wait_acks([jump])
    async with asyncio.timeout(10):
        await arena.orch.wait_for_version(2)
    await expect_refused(
        arena, "rejected.replay",
        lambda: arena.publish_raw(arena.topic("dev-victim"), RawWire.batch(arena.captured)),
        ledger_reason="replay")


async def test_valid_signature_from_a_revoked_key_is_refused(
    arena: Arena,
) -> None:
    # revoked in the registry while the broker credential still works (e.g. a lagging
    # password-file reload): the key itself must no longer be heard
    store = arena.orch.store
    await store.set_status("dev-victim", "revoked")
    await bump_generation(store)
    registry = arena.orch.registry  # the service polls the generation about once a second
    assert registry is not None
    await until(lambda: (view := registry.get("dev-victim")) is not None
                and view.status == "revoked")
    entry = resigned(arena)
    await expect_refused(
        arena, "rejected.revoked",
        lambda: arena.publish_raw(arena.topic("dev-victim"), RawWire.batch(entry)),
        ledger_reason="revoked")


async def test_an_update_signed_with_a_rotated_out_key_is_refused(arena: Arena) -> None:
    # the victim rotates its key (signed by the old one, proven by the new one); whoever
    # kept the old key can no longer be heard: bad_signature, no ack, model unchanged
    from schemas import Control, ControlAction, KeyRotation, rotation_proof

    old, new = arena.victim.key, SigningKey.generate()
    _, rotation = arena.victim.sign(KeyRotation(
        bytes(new.verify_key), rotation_proof(new, bytes(old.verify_key))))
    await arena.victim.publish("rotate", rotation)
    answer = await arena.victim.next("control")
    assert isinstance(answer, Control) and answer.action is ControlAction.KEY_ROTATED
    assert answer.params["public_key"] == bytes(new.verify_key)
    arena.victim.key = new
    entry = resigned(arena, key=old)
    await expect_refused(
        arena, "rejected.bad_signature",
        lambda: arena.publish_raw(arena.topic("dev-victim"), RawWire.batch(entry)),
        ledger_reason="bad_signature")
    assert arena.victim.acks.get(arena.victim.seq) is None  # unauthenticated: no answer


async def test_a_password_receipt_for_a_password_never_offered_is_refused(
    arena: Arena,
) -> None:
    # a stolen key claiming to hold a new broker password it was never given: refused for
    # its reason, the broker's entry untouched
    from schemas import PasswordReceipt

    passwords = PasswordFile(arena.broker.password_file)
    before = passwords.hash_of("dev-victim")
    _, receipt = arena.victim.sign(PasswordReceipt(hashlib.sha256(b"guess").digest()))
    await expect_refused(arena, "rotate.rejected.invalid_field",
                         lambda: arena.victim.publish("rotate", receipt), ledger_reason=None)
    assert passwords.hash_of("dev-victim") == before


async def test_the_old_broker_password_is_refused_after_a_rotation(arena: Arena) -> None:
    # the password leaked with the bundle: rotated, the leaked one no longer logs in, and the
    # new one travelled sealed (only the device's key opens it)
    from orchestrator.devices.passwords import request_password_rotation
    from schemas import Control, ControlAction, PasswordReceipt, open_password, password_digest

    await request_password_rotation(arena.orch.store, "dev-victim", managed=True,
                                    now_ms=int(time.time() * 1000))
    offer = await arena.victim.next("control")
    assert isinstance(offer, Control) and offer.action is ControlAction.NEW_PASSWORD
    assert open_password(offer.params["sealed"], SigningKey.generate()) is None
    new = open_password(offer.params["sealed"], arena.victim.key)
    assert new is not None and new != arena.victim.bundle.mqtt_password
    _, receipt = arena.victim.sign(PasswordReceipt(password_digest(new)))
    await arena.victim.publish("rotate", receipt)
    done = await arena.victim.next("control")
    assert isinstance(done, Control) and done.action is ControlAction.PASSWORD_ROTATED
    await arena.broker.reload()
    with pytest.raises(aiomqtt.MqttError):
        async with arena.raw_client(arena.victim):
            pass
    leaked = arena.victim.bundle
    arena.victim.bundle = dataclasses.replace(leaked, mqtt_password=new)
    try:
        async with arena.raw_client(arena.victim):
            pass
    finally:
        arena.victim.bundle = leaked


async def test_revoked_device_cannot_connect(arena: Arena) -> None:
    from orchestrator.devices.commands import revoke

    await revoke(arena.orch.store, arena.orch.config, "dev-victim", immediate=True)
    await arena.broker.reload()
    with pytest.raises(aiomqtt.MqttError):
        async with arena.raw_client(arena.victim):
            pass


async def test_publishing_under_another_devices_topic_is_never_delivered(
    arena: Arena,
) -> None:
    """The witness holds a valid, never-sent update of the victim's (stolen off the device)
    and publishes it under the victim's topic: the broker ACL drops it, so neither the
    orchestrator nor any subscriber ever sees it."""
    orch = arena.orch
    before = model_state(orch)
    batches = orch.counters["batches"]
    stolen = RawWire.batch(resigned(arena))
    marker = RawWire.batch(b"marker")
    async with arena.raw_client(arena.witness) as client:
        await client.publish(arena.topic("dev-victim"), stolen, qos=1)
        # published after the stolen batch on the same connection: delivered in order, so
        # once the spy has the marker, the stolen batch would have been there first
        await client.publish(arena.topic("dev-witness"), marker, qos=1)
    await until(lambda: any(p == marker for _, p in arena.spied))
    assert all(p != stolen for _, p in arena.spied)
    await until(lambda: orch.counters["batches"] == batches + 1)  # the marker, not the batch
    assert orch.counters["rejected.malformed"] == 1
    assert model_state(orch) == before
    assert [r.reason for r in await orch.store.ledger(sender="dev-victim")] == [None]


async def test_a_device_asking_for_the_orchestrators_client_id_gets_its_own_session(
    arena: Arena,
) -> None:
    """With its own valid credentials the victim connects as ``fedmq-orchestrator-{fed}``
    (predictable) with a clean start, repeatedly: the broker names the session after the
    account, so the orchestrator stays connected, keeps its session and acks as before."""
    orch_id = Topics(arena.fed).orchestrator_client_id
    for _ in range(3):
        async with aiomqtt.Client(
                arena.broker.host, arena.broker.port,
                username=arena.victim.bundle.mqtt_username,
                password=arena.victim.bundle.mqtt_password, identifier=orch_id,
                clean_start=True, protocol=aiomqtt.ProtocolVersion.V5):
            pass
    seq, ok = arena.witness.update(random_delta(arena.orch.params, seed=3), codec=FLOAT32,
                                   seal=False)
    await arena.witness.send(ok)
    assert (await arena.witness.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED
    log = arena.broker.log_text()
    assert log.count(f"as {orch_id} (") == 0
    assert log.count("as orchestrator (") == 1  # its one connection, never replaced
    assert "Client orchestrator already connected" not in log


async def test_enrollment_with_a_wrong_hmac_is_refused(
    arena: Arena, devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    newcomer = await devices(arena.orch, "dev-new", enroll=False)
    key = SigningKey.generate()
    public = bytes(key.verify_key)
    wrong = enroll_mac(b"\x01" * 32, fed=arena.fed, device_id="dev-new", public_key=public)
    body = {"device_id": "dev-new", "public_key": public, "mac": wrong,
            "agent_version": "raw", "info": {}}
    header = RawWire.with_body({"v": 1, "type": "enroll", "fed": arena.fed, "sender": "dev-new",
                             "seq": 1, "ts_ms": int(time.time() * 1000), "enc": "zstd",
                             "to": ""}, body)
    orch = arena.orch
    before = model_state(orch)
    async with arena.raw_client(newcomer) as client:
        await client.publish(arena.topic("dev-new", "enroll"), RawWire.sign(header, key), qos=1)
    await until(lambda: orch.counters["enroll.rejected.bad_hmac"] == 1)
    device = await orch.store.get_device("dev-new")
    assert device is not None and device.status == "pending" and device.public_key is None
    audit = await orch.store.list_audit(device="dev-new", event="rejected")
    assert [a.reason for a in audit] == ["bad_hmac"]
    assert model_state(orch) == before
    # the same message with the right HMAC is let in: the refusal was the HMAC alone
    good = enroll_mac(bytes.fromhex(newcomer.bundle.enroll_secret), fed=arena.fed,
                      device_id="dev-new", public_key=public)
    header = RawWire.with_body({**header, "seq": 2}, {**body, "mac": good})
    async with arena.raw_client(newcomer) as client:
        await client.publish(arena.topic("dev-new", "enroll"), RawWire.sign(header, key), qos=1)
    await until(lambda: orch.counters["enrolled"] == 3)
    device = await orch.store.get_device("dev-new")
    assert device is not None and device.public_key == public


@pytest.mark.parametrize("command", ["fleet.status", "federation.resume"])
async def test_operator_command_signed_by_a_device_key_is_refused(
    arena: Arena, command: str,
) -> None:
    """A device may publish on its own ops/request topic (the ACL pattern is shared with
    operators), so the orchestrator's role check is what refuses it: the key is a device's.
    ``federation.resume``, the one command that changes something, goes no further."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    orch = arena.orch
    before = model_state(orch)
    header = RawWire.with_body(
        {"v": 1, "type": "ops_request", "fed": arena.fed, "sender": "dev-victim",
         "seq": arena.fresh_seq(), "ts_ms": int(time.time() * 1000), "enc": "zstd", "to": ""},
        {"request_id": "r-1", "command": command, "args": {}})
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = f"fl/{arena.fed}/ops/reply/dev-victim"
    props.CorrelationData = b"c-1"
    async with arena.raw_client(arena.victim) as client:
        await client.publish(f"fl/{arena.fed}/ops/request/dev-victim",
                             RawWire.sign(header, arena.victim.key), qos=1, properties=props)
    await until(lambda: orch.counters["ops.rejected.not_authorized"] == 1)
    audit = await orch.store.list_audit(event="rejected", device="dev-victim")
    assert [a.reason for a in audit] == ["not_authorized"]
    assert await orch.store.list_audit(event=["operator_command", "resumed"]) == []
    assert model_state(orch) == before
