"""Enrollment through the running service: auto, manual approval, bad HMAC, idempotence,
revocation — over a real Mosquitto, with the store as the witness."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from nacl.signing import SigningKey

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import approve, revoke
from orchestrator.service import Orchestrator
from schemas import Bundle, EnrollStatus
from tests.support.clock import FakeClock
from tests.support.sim_device import SimDevice
from tests.support.waiting import until


async def test_auto_enrollment_registers_the_key_and_answers_again(
    orchestrator: Orchestrator, devices: Callable[..., Any],
) -> None:
    dev = await devices(orchestrator, "dev-a", enroll=False)
    answer = await dev.enroll()
    assert answer.status is EnrollStatus.ACTIVE
    stored = await orchestrator.store.get_device("dev-a")
    assert stored is not None and stored.status == "active"
    assert stored.public_key == bytes(dev.key.verify_key)
    assert stored.enroll_secret is None  # one-time: cleared once used
    # the same key again: the same answer, nothing changes
    again = await dev.enroll()
    assert again.status is EnrollStatus.ACTIVE
    events = [a.event for a in await orchestrator.store.list_audit(device="dev-a")]
    assert events.count("enrolled") == 1


async def test_another_key_for_an_enrolled_device_is_refused(
    orchestrator: Orchestrator, devices: Callable[..., Any], broker: MosquittoBroker,
) -> None:
    dev = await devices(orchestrator, "dev-b")
    async with SimDevice(dev.bundle, broker, key=SigningKey.generate()) as impostor:
        answer = await impostor.enroll()
    assert answer.status is EnrollStatus.REJECTED and answer.reason == "not_authorized"
    stored = await orchestrator.store.get_device("dev-b")
    assert stored is not None and stored.public_key == bytes(dev.key.verify_key)


async def test_bad_hmac_is_rejected_and_audited(
    orchestrator: Orchestrator, devices: Callable[..., Any],
) -> None:
    dev = await devices(orchestrator, "dev-c", enroll=False)
    answer = await dev.enroll(secret=b"\x00" * 32)
    assert answer.status is EnrollStatus.REJECTED and answer.reason == "bad_hmac"
    stored = await orchestrator.store.get_device("dev-c")
    assert stored is not None and stored.status == "pending" and stored.public_key is None
    audit = await orchestrator.store.list_audit(device="dev-c", event="rejected")
    assert [a.reason for a in audit] == ["bad_hmac"]
    # the right secret still works afterwards
    assert (await dev.enroll()).status is EnrollStatus.ACTIVE


async def test_unknown_device_is_told_so(
    orchestrator: Orchestrator, broker: MosquittoBroker,
) -> None:
    # a broker account but no registry row (e.g. removed from the store by hand): the account
    # is made on the broker alone, and the bundle by hand, as provisioning would have
    bundle = Bundle(device_id="ghost", fed=orchestrator.config.federation.id,
                    broker_host=broker.host, broker_port=broker.port, mqtt_username="ghost",
                    mqtt_password=await broker.add_user("ghost"),
                    orchestrator_key=orchestrator.public_key.hex(),
                    enroll_secret=secrets.token_hex(32))
    async with SimDevice(bundle, broker) as ghost:
        answer = await ghost.enroll()
    assert answer.status is EnrollStatus.REJECTED and answer.reason == "unknown_sender"


async def test_manual_policy_holds_the_key_until_approved(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    clock = FakeClock()
    config = make_config(federation={"enrollment": "manual"})
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as orch:
        dev = await devices(orch, "dev-m", enroll=False)
        answer = await dev.enroll()
        assert answer.status is EnrollStatus.AWAITING_APPROVAL
        # not active yet: its status gets no task, but is counted as refused
        await dev.status(battery_pct=90.0)
        assert (await dev.enroll()).status is EnrollStatus.AWAITING_APPROVAL  # a barrier
        assert dev.down["task"].empty()
        assert orch.counters["status.rejected.not_authorized"] == 1
        await approve(orch.store, "dev-m")
        assert (await dev.enroll()).status is EnrollStatus.ACTIVE
        # the service picks the approval up through the registry generation (polled each s)
        await clock.advance(1.0)
        await until(lambda: (view := orch.registry.get("dev-m")) is not None
                    and view.status == "active")
        await dev.status(battery_pct=90.0)
        task = await dev.next("task")
        assert task.TYPE == "task"


async def test_revoke_marks_the_device_and_leaves_the_credential_to_the_service(
    orchestrator: Orchestrator, devices: Callable[..., Any], broker: MosquittoBroker,
) -> None:
    """The credential stays until the service has told the device (see
    test_service_revocation); ``immediate`` removes it at once."""
    dev = await devices(orchestrator, "dev-r")
    await revoke(orchestrator.store, orchestrator.config, "dev-r", reason="stolen")
    assert "dev-r" in broker.password_file.read_text()
    await devices(orchestrator, "dev-s")
    await revoke(orchestrator.store, orchestrator.config, "dev-s", immediate=True)
    assert "dev-s" not in broker.password_file.read_text()
    await broker.reload()
    stored = await orchestrator.store.get_device("dev-r")
    assert stored is not None and stored.status == "revoked"
    audit = await orchestrator.store.list_audit(device="dev-r", event="revoked")
    assert audit and audit[0].reason == "stolen"
    del dev
