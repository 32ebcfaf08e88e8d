"""The orchestrator's key files across a rotation: a switch a crash interrupted is finished,
files that contradict the record are one clear error, and the retired key is destroyed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from orchestrator.link.keyring import (
    Rotation,
    RotationError,
    next_path,
    retire_files,
    retiring_path,
    settle,
)
from orchestrator.link.keys import KeyFileError, create_key, load_or_create_key


def _rotation(old: SigningKey, new: SigningKey, phase: str = "requested") -> Rotation:
    return Rotation("r1", phase, "t", 1, 60.0, bytes(old.verify_key).hex(),  # type: ignore[arg-type]
                    bytes(new.verify_key).hex(), 1)


@pytest.mark.parametrize("crash_after", ["record", "link"])
def test_a_switch_interrupted_by_a_crash_is_finished(tmp_path: Path, crash_after: str) -> None:
    key_path = tmp_path / "orchestrator.key"
    old = load_or_create_key(key_path)
    new = create_key(next_path(key_path))
    rotation = _rotation(old, new).announced(b"signed", now_ms=1000)
    if crash_after == "link":
        os.link(key_path, retiring_path(key_path))
    keys = settle(key_path, rotation)
    assert bytes(keys.current) == bytes(new)
    assert keys.retiring is not None and bytes(keys.retiring) == bytes(old)
    assert not next_path(key_path).exists()
    assert len(keys.unseal) == 2
    again = settle(key_path, rotation)  # idempotent
    assert bytes(again.current) == bytes(new)


def test_requested_keeps_the_old_key_and_needs_the_next_file(tmp_path: Path) -> None:
    key_path = tmp_path / "orchestrator.key"
    old = load_or_create_key(key_path)
    new = create_key(next_path(key_path))
    rotation = _rotation(old, new)
    assert bytes(settle(key_path, rotation).current) == bytes(old)
    next_path(key_path).unlink()
    with pytest.raises(KeyFileError, match="is missing"):
        settle(key_path, rotation)


def test_retired_destroys_the_old_key_and_a_foreign_key_file_is_refused(tmp_path: Path) -> None:
    key_path = tmp_path / "orchestrator.key"
    old = load_or_create_key(key_path)
    new = create_key(next_path(key_path))
    announced = _rotation(old, new).announced(b"signed", now_ms=1000)
    settle(key_path, announced)
    keys = settle(key_path, announced.retired(now_ms=70_000))
    assert keys.retiring is None and not retiring_path(key_path).exists()
    retire_files(key_path)  # nothing left: a no-op
    with pytest.raises(KeyFileError, match="does not hold the key"):
        settle(key_path, _rotation(old, SigningKey.generate()).retired(now_ms=1))


def test_the_record_round_trips_and_a_broken_one_is_one_line() -> None:
    rotation = _rotation(SigningKey.generate(), SigningKey.generate())
    assert Rotation.from_bytes(rotation.to_bytes()) == rotation
    with pytest.raises(RotationError, match="unreadable"):
        Rotation.from_bytes(b"{")
