"""The device's pinned orchestrator keys across a rotation (``OrchestratorKeys``, on a fake
clock): what is adopted, for how long the old key is accepted, what survives a restart."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge_agent.orchkeys import KeyLostError, OrchestratorKeys
from edge_agent.state import LocalState
from schemas import FedmqError, Reason, SignatureError, Status, pack
from schemas.messages import KeyAnnouncement
from schemas.signing import announcement_proof
from tests.support.agent_clock import FakeClock

FED = "fed"
LOG = logging.getLogger("test")


def _announce(old: SigningKey, new: SigningKey, *, now_ms: int, grace_ms: int = 60_000,
              signer: SigningKey | None = None, proof_by: SigningKey | None = None) -> bytes:
    message = KeyAnnouncement(
        bytes(new.verify_key), bytes(old.verify_key),
        announcement_proof(proof_by or new, fed=FED, old_public_key=bytes(old.verify_key)),
        now_ms, now_ms + grace_ms)
    return pack(message, key=signer or old, fed=FED, sender="orchestrator", seq=1,
                ts_ms=now_ms)


def _msg(key: SigningKey, now_ms: int) -> bytes:
    return pack(Status(), key=key, fed=FED, sender="orchestrator", seq=2, ts_ms=now_ms)


async def test_adopt_accept_both_until_the_new_key_signs_and_keep_it(tmp_path: Path) -> None:
    clock = FakeClock()
    old, new = SigningKey.generate(), SigningKey.generate()
    now = int(clock.wall() * 1000)
    async with LocalState(tmp_path / "s.db", device_id="d", fed=FED) as state:
        keys = OrchestratorKeys(state, bytes(old.verify_key), fed=FED, clock=clock, logger=LOG)
        await keys.load()
        adopted: list[bool] = []
        keys.on_adopt = lambda: adopted.append(True)
        assert await keys.receive(_announce(old, new, now_ms=now))
        assert adopted == [True] and keys.ring.current == bytes(new.verify_key)
        assert not await keys.receive(_announce(old, new, now_ms=now))  # again: nothing to do
        keys.verify(_msg(old, now))  # still accepted
        keys.verify(_msg(new, now))
        await keys.settle()
        with pytest.raises(SignatureError):
            keys.verify(_msg(old, now))
    async with LocalState(tmp_path / "s.db", device_id="d", fed=FED) as state:
        keys = OrchestratorKeys(state, bytes(old.verify_key), fed=FED, clock=clock, logger=LOG)
        await keys.load()  # the old bundle is recognised as older: the ring stays
        assert keys.ring.current == bytes(new.verify_key) and keys.ring.previous is None


async def test_the_old_key_is_refused_once_its_retirement_passes(tmp_path: Path) -> None:
    clock = FakeClock()
    old, new = SigningKey.generate(), SigningKey.generate()
    now = int(clock.wall() * 1000)
    async with LocalState(tmp_path / "s.db", device_id="d", fed=FED) as state:
        keys = OrchestratorKeys(state, bytes(old.verify_key), fed=FED, clock=clock, logger=LOG)
        await keys.load()
        await keys.receive(_announce(old, new, now_ms=now, grace_ms=10_000))
        keys.verify(_msg(old, now))
        await clock.advance(11.0)
        with pytest.raises(SignatureError):
            keys.verify(_msg(old, now))


async def test_forged_late_and_foreign_announcements(tmp_path: Path) -> None:
    clock = FakeClock()
    old, new, mallory = (SigningKey.generate() for _ in range(3))
    now = int(clock.wall() * 1000)
    async with LocalState(tmp_path / "s.db", device_id="d", fed=FED) as state:
        keys = OrchestratorKeys(state, bytes(old.verify_key), fed=FED, clock=clock, logger=LOG)
        await keys.load()
        with pytest.raises(SignatureError):  # not signed by the pinned key
            await keys.receive(_announce(old, new, now_ms=now, signer=mallory))
        with pytest.raises(FedmqError) as bad_proof:  # the new key did not prove itself
            await keys.receive(_announce(old, new, now_ms=now, proof_by=mallory))
        assert bad_proof.value.reason is Reason.BAD_SIGNATURE
        with pytest.raises(FedmqError, match="another old key"):
            await keys.receive(_announce(mallory, new, now_ms=now, signer=old))
        await clock.advance(120.0)  # the announcement's grace is over: missed it
        with pytest.raises(KeyLostError, match="re-enroll"):
            await keys.receive(_announce(old, new, now_ms=now))
        assert keys.ring.current == bytes(old.verify_key)


async def test_a_newer_bundle_replaces_an_unrelated_ring(tmp_path: Path) -> None:
    clock = FakeClock()
    old, new, other = (SigningKey.generate() for _ in range(3))
    now = int(clock.wall() * 1000)
    async with LocalState(tmp_path / "s.db", device_id="d", fed=FED) as state:
        keys = OrchestratorKeys(state, bytes(old.verify_key), fed=FED, clock=clock, logger=LOG)
        await keys.load()
        await keys.receive(_announce(old, new, now_ms=now))
    async with LocalState(tmp_path / "s.db", device_id="d", fed=FED) as state:
        keys = OrchestratorKeys(state, bytes(other.verify_key), fed=FED, clock=clock,
                                logger=LOG)
        await keys.load()
        assert keys.ring.current == bytes(other.verify_key) and keys.ring.previous is None


async def test_an_earlier_announcement_is_read_like_the_latest_but_one_never_pinned_passes(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    k0, k1, k2 = (SigningKey.generate() for _ in range(3))
    now = int(clock.wall() * 1000)
    first = _announce(k0, k1, now_ms=now - 120_000)  # retired a minute ago
    second = _announce(k1, k2, now_ms=now)
    async with LocalState(tmp_path / "late.db", device_id="d", fed=FED) as state:
        late = OrchestratorKeys(state, bytes(k2.verify_key), fed=FED, clock=clock, logger=LOG)
        await late.load()  # enrolled after both rotations
        assert not await late.receive(first, earlier=True)  # never pinned k0: nothing to do
        with pytest.raises(SignatureError):
            await late.receive(first)  # on model/key the same bytes are refused as before
    async with LocalState(tmp_path / "lost.db", device_id="d", fed=FED) as state:
        lost = OrchestratorKeys(state, bytes(k0.verify_key), fed=FED, clock=clock, logger=LOG)
        await lost.load()  # missed both: the second says nothing it can check, the first does
        with pytest.raises(SignatureError):
            await lost.receive(second)
        with pytest.raises(KeyLostError, match="missed the announcement"):
            await lost.receive(first, earlier=True)
