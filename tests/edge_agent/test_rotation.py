"""The agent's key rotation on a fake clock, without a broker: the schedule, the resend of a
pending rotation, the durable pending key, the switch that re-signs the outbox, and an update
signed with the old key while the switch happened. The path through a real broker and the real
orchestrator is in tests/orchestrator/test_service_rotation_agents.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError
from edge_agent.orchkeys import OrchestratorKeys
from edge_agent.outbox import Outbox
from edge_agent.rotation import KeyRotator
from edge_agent.shared import AgentStats, Offload, Pulse
from edge_agent.signer import Signer
from edge_agent.state import Enrollment, LocalState
from edge_agent.tracker import ActivityTracker
from schemas import (
    Control,
    ControlAction,
    EnrollStatus,
    KeyRotation,
    Status,
    check_rotation_proof,
    decode,
    pack,
    resign,
    verify,
)
from schemas.errors import SignatureError
from tests.support.agent_clock import FakeClock

HOUR = 3600.0
RETRY = 30.0


@dataclass
class FakeSession:
    published: list[tuple[str, bytes]] = field(default_factory=list)
    sent: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_connected(self) -> None:
        return None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> None:
        self.published.append((topic, payload))
        self.sent.set()


@dataclass
class Rig:
    state: LocalState
    outbox: Outbox
    rotator: KeyRotator
    session: FakeSession
    clock: FakeClock


async def _rig(path: Path, clock: FakeClock, interval_s: float | None) -> AsyncIterator[Rig]:
    async with LocalState(path, device_id="dev", fed="fed") as state:
        outbox = await Outbox.open(state)
        status_due, changed = asyncio.Event(), Pulse()
        tracker = await ActivityTracker.load(state, model_stopped=False, clock=clock,
                                             status_due=status_due, changed=changed)
        await tracker.commit(lambda a: a.on_enrolled(Enrollment(EnrollStatus.ACTIVE, 10.0)))
        keys = OrchestratorKeys(state, bytes(SigningKey.generate().verify_key), fed="fed",
                                clock=clock, logger=logging.getLogger("test"))
        await keys.load()
        signer = Signer(state, outbox, device_id="dev", fed="fed", orchestrator_keys=keys,
                        clock=clock, offload=Offload(), max_update_bytes=1 << 20)
        config = AgentConfig(key_rotation_s=interval_s, key_rotation_retry_s=RETRY)
        rotator = KeyRotator(state=state, signer=signer, outbox=outbox, topic="up/rotate",
                             tracker=tracker, config=config, clock=clock, stats=AgentStats(),
                             changed=changed, status_due=status_due,
                             outbox_due=asyncio.Event(), logger=logging.getLogger("test"))
        await rotator.load()
        yield Rig(state, outbox, rotator, FakeSession(), clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rig(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Rig]:
    async for r in _rig(tmp_path / "state.db", clock, HOUR):
        yield r


async def _sent(rig: Rig, n: int) -> KeyRotation:
    while len(rig.session.published) < n:
        rig.session.sent.clear()
        await asyncio.wait_for(rig.session.sent.wait(), 5)
    topic, payload = rig.session.published[n - 1]
    assert topic == "up/rotate"
    _, message = decode(payload, rig.state.signing_key.verify_key, KeyRotation)
    return message


async def test_the_schedule_rotates_resends_until_confirmed_then_waits_a_full_interval(
    rig: Rig, clock: FakeClock,
) -> None:
    old = rig.state.signing_key
    loop = asyncio.create_task(rig.rotator.run(rig.session))  # type: ignore[arg-type]
    try:
        assert (await clock.sleeper()).duration == HOUR  # nothing before the interval
        assert rig.session.published == []
        await clock.advance(HOUR)
        first = await _sent(rig, 1)  # signed by the old key (decode checked it)
        assert check_rotation_proof(first.new_public_key, first.proof,
                                    bytes(old.verify_key))
        assert (await clock.sleeper(lambda s: s.duration == RETRY)).duration == RETRY
        await clock.advance(RETRY)
        assert (await _sent(rig, 2)).new_public_key == first.new_public_key  # the same key
        # a stale update signed with the old key, still in the outbox
        stale = pack(Status(), key=old, fed="fed", sender="dev", seq=7, ts_ms=1)
        await rig.outbox.put(7, stale, created_ms=1, signed_with=old)
        await rig.outbox.mark_sent([7], 1)
        await rig.rotator.on_control(Control(ControlAction.KEY_ROTATED, "",
                                             {"public_key": first.new_public_key}))
        new = rig.state.signing_key
        assert bytes(new.verify_key) == first.new_public_key and rig.rotator.pending is None
        (entry,) = await rig.outbox.pending()
        assert verify(entry.envelope, new.verify_key).header.seq == 7
        assert entry.last_sent_ms is None  # due again at once, under the new key
        with pytest.raises(SignatureError):
            verify(entry.envelope, old.verify_key)
        # the next scheduled rotation is a full interval after this one
        assert (await clock.sleeper(lambda s: s.duration == HOUR)).duration == HOUR
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_an_orchestrator_request_starts_a_rotation_at_once(
    tmp_path: Path, clock: FakeClock,
) -> None:
    async for rig in _rig(tmp_path / "s.db", clock, None):  # no schedule
        loop = asyncio.create_task(rig.rotator.run(rig.session))  # type: ignore[arg-type]
        try:
            await asyncio.sleep(0)  # the loop is up and waiting, untimed: nothing scheduled
            assert clock.sleepers() == [] and rig.session.published == []
            await rig.rotator.on_control(Control(ControlAction.ROTATE_KEY, "operator"))
            assert (await _sent(rig, 1)).new_public_key == bytes(
                rig.rotator.pending.verify_key)  # type: ignore[union-attr]
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)


async def test_the_pending_key_survives_a_restart_and_a_foreign_confirmation_is_ignored(
    tmp_path: Path, clock: FakeClock,
) -> None:
    path = tmp_path / "s.db"
    async for rig in _rig(path, clock, HOUR):
        old = bytes(rig.state.signing_key.verify_key)
        await rig.rotator.begin("test")
        pending = rig.rotator.pending
        assert pending is not None
    async for rig in _rig(path, clock, HOUR):
        assert rig.rotator.pending is not None
        assert bytes(rig.rotator.pending) == bytes(pending)
        await rig.rotator.confirmed(bytes(SigningKey.generate().verify_key))
        assert bytes(rig.state.signing_key.verify_key) == old  # not ours: no switch
        await rig.rotator.confirmed(bytes(pending.verify_key))
        await rig.rotator.confirmed(bytes(pending.verify_key))  # a second copy: no-op
        assert bytes(rig.state.signing_key.verify_key) == bytes(pending.verify_key)
    async for rig in _rig(path, clock, HOUR):
        assert rig.rotator.pending is None
        assert bytes(rig.state.signing_key.verify_key) == bytes(pending.verify_key)


async def test_an_update_signed_with_the_old_key_during_the_switch_is_re_signed(
    rig: Rig,
) -> None:
    old = rig.state.signing_key
    await rig.rotator.begin("test")
    assert rig.rotator.pending is not None
    signed_before = pack(Status(), key=old, fed="fed", sender="dev", seq=3, ts_ms=1)
    await rig.rotator.confirmed(bytes(rig.rotator.pending.verify_key))
    # the encoder finished with the old key after the switch committed
    await rig.outbox.put(3, signed_before, created_ms=1, signed_with=old)
    (entry,) = await rig.outbox.pending()
    verify(entry.envelope, rig.state.signing_key.verify_key)


def test_the_rotation_interval_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="key_rotation_s"):
        AgentConfig(key_rotation_s=0)
    with pytest.raises(ConfigError, match="key_rotation_retry_s"):
        AgentConfig(key_rotation_retry_s=-1)


@given(seed=st.binary(min_size=32, max_size=32), seq=st.integers(0, 2**63 - 1),
       sealed=st.booleans())
def test_resign_keeps_the_signed_bytes_and_only_the_new_key_verifies(
    seed: bytes, seq: int, sealed: bool,
) -> None:
    old, new = SigningKey(seed), SigningKey.generate()
    seal = new.verify_key.to_curve25519_public_key() if sealed else None
    envelope = pack(Status(outbox_len=seq % 100), key=old, fed="f", sender="d", seq=seq,
                    ts_ms=1, seal_to=seal)
    again = resign(envelope, new)
    assert verify(again, new.verify_key).header == verify(envelope, old.verify_key).header
    assert len(again) == len(envelope)
    with pytest.raises(SignatureError):
        verify(again, old.verify_key)
