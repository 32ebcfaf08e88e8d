"""The service's revocation steps on a fake clock and a fake link: the order goes out retained
once (retried while the link is down), the grace period counts from when it went out and
survives a restart, a confirmation ends it early, and the last step is audited."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from nacl.signing import SigningKey
from paho.mqtt.properties import Properties

from orchestrator.broker import PasswordFile
from orchestrator.devices.registry import Registry
from orchestrator.devices.revocation import Revocations
from orchestrator.link.mqtt import NotConnectedError
from orchestrator.link.sender import Outbound
from orchestrator.store import AuditEvent, Store
from schemas.envelope import decode_body, verify
from schemas.messages import Control, ControlAction
from schemas.topics import Topics
from tests.support.clock import FakeClock

GRACE_S = 30.0
KEY = SigningKey.generate()


class FakeLink:
    def __init__(self) -> None:
        self.up = True
        self.sent: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None) -> None:
        if not self.up:
            raise NotConnectedError("down")
        self.sent.append((topic, payload, retain))


class Seqs:
    def __init__(self) -> None:
        self.n = 0

    async def reserve(self, n: int) -> list[int]:
        return [await self.next() for _ in range(n)]

    async def next(self) -> int:
        self.n += 1
        return self.n


async def _revocations(store: Store, link: FakeLink, clock: FakeClock, passwords: PasswordFile
                       ) -> tuple[Revocations, Counter[str]]:
    registry = Registry(store)
    await registry.load()
    counters: Counter[str] = Counter()
    outbound = Outbound(link, key=KEY, topics=Topics("fed"), seqs=Seqs(), clock=clock,
                        counters=counters)
    return Revocations(registry=registry, store=store, outbound=outbound, passwords=passwords,
                       reload=lambda: None, grace_s=GRACE_S, clock=clock,
                       counters=counters), counters


async def _revoked(store: Store, device: str, reason: str) -> None:
    await store.add_device(device, secret=b"s" * 32)
    await store.set_key(device, bytes(SigningKey.generate().verify_key))
    await store.set_status(device, "revoked", audit=AuditEvent("revoked", "cli", device=device,
                                                               reason=reason))


async def test_order_then_grace_across_a_restart(tmp_path: Path) -> None:
    clock, link = FakeClock(), FakeLink()
    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set_many({"d1": "pw", "d2": "pw"}, iterations=1)
    async with Store.open(tmp_path / "o.db", clock=clock.wall_ms) as store:
        await _revoked(store, "d1", "stolen")
        revocations, counters = await _revocations(store, link, clock, passwords)

        link.up = False  # not out: no grace period yet, tried again on the next sync
        await revocations.sync()
        assert counters["revoke.deferred"] == 1 and link.sent == []
        await clock.advance(GRACE_S * 2)
        link.up = True
        await revocations.sync()
        ((topic, payload, retain),) = link.sent
        assert (topic, retain) == ("fl/fed/down/d1/control", True)
        opened = verify(payload, KEY.verify_key)
        assert opened.header.to == "d1"
        assert decode_body(opened, Control) == Control(ControlAction.REVOKE, "stolen")
        await revocations.sync()
        assert len(link.sent) == 1  # once

        await clock.advance(GRACE_S - 1)
        # a restart: the same store, a new service — no second order, the same deadline
        revocations, counters = await _revocations(store, link, clock, passwords)
        await revocations.sync()
        assert len(link.sent) == 1 and "d1" in passwords.users()
        await clock.advance(1)
        await revocations.sync()
        assert "d1" not in passwords.users() and "d2" in passwords.users()
        assert link.sent[-1] == ("fl/fed/down/d1/control", b"", True)  # the order cleared
        (row,) = await store.list_audit(event="credential_removed")
        assert (row.device, row.reason, row.actor) == ("d1", "grace_expired", "orchestrator")
        await revocations.sync()
        assert len(link.sent) == 2 and revocations.pending() == []


async def test_a_confirmation_ends_the_grace_period_early(tmp_path: Path) -> None:
    clock, link = FakeClock(), FakeLink()
    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set_many({"d1": "pw"}, iterations=1)
    async with Store.open(tmp_path / "o.db", clock=clock.wall_ms) as store:
        await _revoked(store, "d1", "")
        revocations, counters = await _revocations(store, link, clock, passwords)
        await revocations.confirmed("d1")  # before any order went out: nothing to confirm
        assert "d1" in passwords.users()
        await revocations.sync()
        assert decode_body(verify(link.sent[0][1], KEY.verify_key), Control).reason == "revoked"
        await revocations.confirmed("d1")
        assert "d1" not in passwords.users()
        assert [r.reason for r in await store.list_audit(event="credential_removed")] == [
            "confirmed"]
        await revocations.confirmed("d1")  # a duplicate confirmation changes nothing
        assert len(await store.list_audit(event="credential_removed")) == 1
        assert counters["revoke.receipts"] == 3 and counters["revoke.confirmed"] == 1
