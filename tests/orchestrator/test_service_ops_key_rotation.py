"""Operator tools across a rotation of the orchestrator's key: a real Mosquitto, the real
orchestrator and the real :class:`OperatorClient`.

An open client learns the new key from the retained announcement before the orchestrator signs
with it, so its next request is answered and verified; the adopted key is saved beside the
bundle, so a later run trusts it even when no announcement is retained. An announcement signed
by any other key is ignored with its reason; a bundle that missed the whole grace fails with one
line.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest
from nacl.signing import SigningKey

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision, write_private
from orchestrator.link.rotation import request_rotation
from orchestrator.ops.client import OperatorClient, OpsClientError, identity_path
from orchestrator.ops.orchkeys import Ring, keys_path
from orchestrator.service import Orchestrator
from schemas import Bundle, pack
from schemas.messages import KeyAnnouncement
from schemas.signing import announcement_proof
from schemas.topics import Topics
from tests.support.clock import FakeClock
from tests.support.service_config import FED
from tests.support.waiting import until

KEYS = ("keys",)
"""The task that announces and retires keys: time moves only while it sleeps, so it acts at
its own time however slow the machine."""


@pytest.fixture
async def orch(make_config: Callable[..., Config]) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(make_config(), store_synchronous="NORMAL") as running:
        yield running


async def _operator(orch: Orchestrator, broker: MosquittoBroker, tmp_path: Path) -> Path:
    bundle = await provision(orch.store, orch.config, "ops-1",
                             orchestrator_key=orch.public_key.hex(), role="operator")
    await broker.reload()
    path = tmp_path / "ops-1.bundle.json"
    write_private(path, bundle.to_json())
    return path


async def _publish_retained(broker: MosquittoBroker, payload: bytes) -> None:
    """Retain ``payload`` on the key topic as an intruder account allowed to write it (what a
    compromised broker can do; the orchestrator's own account would close its session)."""
    name = f"intruder-{uuid.uuid4().hex[:8]}"

    def grant() -> None:
        with broker.acl_file.open("a", encoding="utf-8") as fh:
            fh.write(f"\nuser {name}\ntopic write {Topics(FED).model_key}\n")

    await asyncio.to_thread(grant)
    password = await broker.add_user(name)  # reloads: the ACL line is read too
    async with aiomqtt.Client(broker.host, broker.port, username=name, password=password,
                              identifier=name, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(Topics(FED).model_key, payload, qos=1, retain=True)


async def test_an_operator_client_follows_a_rotation_and_later_runs_trust_the_new_key(
    orch: Orchestrator, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    path = await _operator(orch, broker, tmp_path)
    old = orch.public_key
    async with OperatorClient.open(path) as ops:
        assert (await ops.request("ping"))["pong"] is True
        rotation = await request_rotation(orch.store, orch.config.federation.key_path,
                                          grace_s=3600, actor="test",
                                          now_ms=int(time.time() * 1000))
        new = bytes.fromhex(rotation.new_public)
        await until(lambda: orch.public_key == new, 20)
        # no wait for the client: the announcement was delivered before the new key signed
        assert (await ops.request("ping"))["pong"] is True
        assert ops.keys.ring.current == new and ops.keys.ring.previous == old

    saved = keys_path(path)
    assert Ring.from_json(saved.read_text()).current == new
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    # the announcement no longer retained: a later run trusts the saved key
    await _publish_retained(broker, b"")
    async with OperatorClient.open(path) as ops:
        assert ops.keys.ring.current == new
        assert (await ops.request("ping"))["pong"] is True


async def test_a_forged_announcement_is_ignored_with_its_reason(
    orch: Orchestrator, broker: MosquittoBroker, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = await _operator(orch, broker, tmp_path)
    pinned = orch.public_key
    caplog.set_level(logging.INFO, logger="orchestrator.ops.client")
    async with OperatorClient.open(path) as ops:
        attacker, theirs = SigningKey.generate(), SigningKey.generate()
        now = int(time.time() * 1000)
        forged = pack(KeyAnnouncement(
            new_public_key=bytes(theirs.verify_key), old_public_key=pinned,
            proof=announcement_proof(theirs, fed=FED, old_public_key=pinned),
            not_before_ms=now, retire_after_ms=now + 3_600_000),
            key=attacker, fed=FED, sender="orchestrator", seq=10**12, ts_ms=now)
        await _publish_retained(broker, forged)

        def ignored() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if "ignored the orchestrator key announcement" in r.getMessage()]

        await until(lambda: bool(ignored()), 10)
        assert "not signed by an orchestrator key this bundle trusts" in ignored()[0]
        assert ops.ignored_announcements == [ignored()[0].split(": ", 1)[1]]
        assert ops.keys.ring.current == pinned
        assert (await ops.request("ping"))["pong"] is True
    assert not keys_path(path).exists()


async def test_an_operator_bundle_that_missed_the_grace_fails_with_one_line(
    make_config: Callable[..., Config], broker: MosquittoBroker, tmp_path: Path,
) -> None:
    clock = FakeClock()
    async with Orchestrator(make_config(), store_synchronous="NORMAL", clock=clock) as orch:
        path = await _operator(orch, broker, tmp_path)  # pins the first key; not used yet
        rotation = await request_rotation(orch.store, orch.config.federation.key_path,
                                          grace_s=60, actor="test", now_ms=clock.wall_ms())
        await clock.advance(1.0, wait_for=KEYS)
        await until(lambda: orch.public_key == bytes.fromhex(rotation.new_public))
        await clock.advance(61.0, wait_for=KEYS)
        async with asyncio.timeout(10):
            while not await orch.store.list_audit(event="key_retired"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        client = OperatorClient(Bundle.from_json(path.read_text()), identity_path(path),
                                keys_file=keys_path(path), timeout_s=5,
                                clock=lambda: clock.wall_ms() / 1000)
        with pytest.raises(OpsClientError) as caught:
            async with client as ops:
                await ops.request("ping")
        line = str(caught.value)
        assert "missed the announcement" in line and "new operator bundle" in line
        assert "\n" not in line
        assert not keys_path(path).exists()
