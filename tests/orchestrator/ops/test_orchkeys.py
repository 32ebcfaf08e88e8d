"""The operator's orchestrator key ring on a fake clock: adopt a verified announcement, accept
the old key until the new one signs, refuse a forged or foreign one, one line after the grace,
and a saved ring that a newer bundle overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from orchestrator.ops.orchkeys import KeyLostError, TrustedKeys
from schemas import FedmqError, SignatureError, pack
from schemas.messages import KeyAnnouncement, OperatorResponse
from schemas.signing import announcement_proof

FED = "fed-1"
GRACE_MS = 60_000


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def _announce(old: SigningKey, new: SigningKey, now_ms: int, *, fed: str = FED,
              signer: SigningKey | None = None) -> bytes:
    old_public = bytes(old.verify_key)
    message = KeyAnnouncement(
        new_public_key=bytes(new.verify_key), old_public_key=old_public,
        proof=announcement_proof(new, fed=fed, old_public_key=old_public),
        not_before_ms=now_ms, retire_after_ms=now_ms + GRACE_MS)
    return pack(message, key=signer or old, fed=fed, sender="orchestrator", seq=now_ms,
                ts_ms=now_ms)


def _reply(key: SigningKey, now_ms: int) -> bytes:
    return pack(OperatorResponse("r", True, {}), key=key, fed=FED, sender="orchestrator",
                seq=now_ms + 1, ts_ms=now_ms, to="ops-1")


def _keys(tmp_path: Path, bundle: SigningKey, clock: Clock) -> TrustedKeys:
    keys = TrustedKeys(tmp_path / "ops.bundle.json.orchkeys", bytes(bundle.verify_key),
                       fed=FED, now_ms=clock)
    keys.load()
    return keys


def test_adopts_saves_and_accepts_the_old_key_until_the_new_one_signs(tmp_path: Path) -> None:
    clock = Clock()
    old, new = SigningKey.generate(), SigningKey.generate()
    keys = _keys(tmp_path, old, clock)
    ring = keys.adopt(_announce(old, new, clock.ms))
    assert ring is not None and ring.current == bytes(new.verify_key)
    keys.save(ring)
    keys.verify(_reply(old, clock.ms))  # the old key, before the new one signed
    keys.verify(_reply(new, clock.ms))
    with pytest.raises(SignatureError):
        keys.verify(_reply(old, clock.ms))
    assert keys.adopt(_announce(old, new, clock.ms)) is None  # already followed

    again = _keys(tmp_path, old, clock)  # a later run, same bundle
    assert again.ring.current == bytes(new.verify_key)
    clock.ms += GRACE_MS
    with pytest.raises(SignatureError):
        again.verify(_reply(old, clock.ms))  # retired

    newer_bundle = SigningKey.generate()
    assert _keys(tmp_path, newer_bundle, clock).ring.current == bytes(newer_bundle.verify_key)


def test_forged_foreign_and_late_announcements(tmp_path: Path) -> None:
    clock = Clock()
    old, new = SigningKey.generate(), SigningKey.generate()
    keys = _keys(tmp_path, old, clock)
    with pytest.raises(SignatureError, match="not signed by an orchestrator key"):
        keys.adopt(_announce(old, new, clock.ms, signer=SigningKey.generate()))
    with pytest.raises(FedmqError, match="federation"):
        keys.adopt(_announce(old, new, clock.ms, fed="other"))
    with pytest.raises(FedmqError, match="another old key"):
        keys.adopt(pack(KeyAnnouncement(
            new_public_key=bytes(new.verify_key), old_public_key=bytes(new.verify_key)[::-1],
            proof=announcement_proof(new, fed=FED, old_public_key=bytes(new.verify_key)[::-1]),
            not_before_ms=clock.ms, retire_after_ms=clock.ms + 1), key=old, fed=FED,
            sender="orchestrator", seq=1, ts_ms=clock.ms))
    announcement = _announce(old, new, clock.ms)
    clock.ms += GRACE_MS
    with pytest.raises(KeyLostError, match=r"missed the announcement.*new operator bundle"):
        keys.adopt(announcement)
    assert keys.ring.current == bytes(old.verify_key)
    assert not (tmp_path / "ops.bundle.json.orchkeys").exists()
