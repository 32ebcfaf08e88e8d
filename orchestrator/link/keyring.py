"""The orchestrator's keys across a rotation of its own key: files and the durable record.

Files beside ``orchestrator.key`` (each 0600, one hex seed):

* ``orchestrator.key`` — the key the orchestrator signs with now (what bundles pin);
* ``orchestrator.key.next`` — the new key, from ``fedmq orchestrator rotate-key`` until the
  service announces it;
* ``orchestrator.key.retiring`` — the old key during the grace period (it still opens
  updates sealed to it), deleted when the grace ends.

The record (server state ``KEY_ROTATION``) says which phase the rotation is in: ``requested``
(the next key exists), ``announced`` (the announcement is signed by the old key and kept here;
the files are switched — :func:`settle` finishes a switch a crash interrupted) and ``retired``
(the old key is gone; the announcement is still kept, retained, so a device that missed the
whole grace learns, signed by the key it pins, that it must re-enroll). A later rotation keeps
the earlier announcements (``earlier``, generation 1 first), each retained on its own topic, so
a device that missed several rotations still finds the one its key signed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from orchestrator.errors import OrchestratorError
from orchestrator.link.keys import KeyFileError, load_key, load_or_create_key
from schemas.envelope import unseal_key

__all__ = ["KeySet", "Phase", "Rotation", "RotationError", "next_path", "retire_files",
           "retiring_path", "settle"]

Phase = Literal["requested", "announced", "retired"]


class RotationError(OrchestratorError):
    """A rotation cannot be requested or carried on (one line)."""


def next_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".next")


def retiring_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".retiring")


@dataclass(frozen=True, slots=True)
class Rotation:
    """One rotation of the orchestrator's key, as kept in the store."""

    request_id: str
    phase: Phase
    actor: str
    requested_ms: int
    grace_s: float
    old_public: str
    new_public: str
    generation: int
    not_before_ms: int = 0
    retire_after_ms: int = 0
    announcement: str = ""
    """Hex of the signed ``KeyAnnouncement`` envelope (from ``announced`` on)."""
    retired_ms: int = 0
    earlier: tuple[str, ...] = ()
    """Hex of the announcements of generations 1 … ``generation - 1``."""

    @property
    def in_progress(self) -> bool:
        return self.phase != "retired"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Rotation:
        try:
            d = json.loads(raw)
            d["earlier"] = tuple(d.get("earlier", ()))
            rotation = cls(**d)
        except (ValueError, TypeError) as exc:
            raise RotationError(f"unreadable key rotation record in the store: {exc}"
                                ) from None
        if rotation.phase not in ("requested", "announced", "retired"):
            raise RotationError(f"key rotation record has unknown phase {rotation.phase!r}")
        return rotation

    def announced(self, payload: bytes, *, now_ms: int) -> Rotation:
        return replace(self, phase="announced", not_before_ms=now_ms,
                       retire_after_ms=now_ms + int(self.grace_s * 1000),
                       announcement=payload.hex())

    def retired(self, *, now_ms: int) -> Rotation:
        return replace(self, phase="retired", retired_ms=now_ms)


@dataclass(frozen=True)
class KeySet:
    """The key the orchestrator signs with, and the retiring one during a grace period."""

    current: SigningKey
    retiring: SigningKey | None = None

    @property
    def unseal(self) -> tuple[PrivateKey, ...]:
        """Keys that open sealed updates, the current one first."""
        keys = [self.current] + ([self.retiring] if self.retiring is not None else [])
        return tuple(unseal_key(k) for k in keys)


def settle(key_path: Path, rotation: Rotation | None) -> KeySet:
    """The keys for ``rotation``'s phase, finishing a file switch a crash interrupted
    (blocking: file I/O). ``KeyFileError`` when the files contradict the record."""
    if rotation is None or rotation.phase == "requested":
        if rotation is not None and not next_path(key_path).exists():
            raise KeyFileError(f"a key rotation was requested but {next_path(key_path)} is "
                               "missing; run 'fedmq orchestrator rotate-key' again")
        return KeySet(load_or_create_key(key_path))
    if rotation.phase == "announced":
        _switch(key_path)
        keys = KeySet(load_key(key_path), load_key(retiring_path(key_path)))
        assert keys.retiring is not None
        _expect(keys.retiring, rotation.old_public, retiring_path(key_path))
    else:
        retire_files(key_path)
        keys = KeySet(load_key(key_path))
    _expect(keys.current, rotation.new_public, key_path)
    return keys


def _switch(key_path: Path) -> None:
    """next → current, current → retiring; each step atomic and idempotent."""
    nxt, retiring = next_path(key_path), retiring_path(key_path)
    if not nxt.exists():
        return  # done before
    if not retiring.exists():
        os.link(key_path, retiring)  # the old key keeps a name before it loses its own
    os.replace(nxt, key_path)
    _sync_dir(key_path.parent)


def retire_files(key_path: Path) -> None:
    """Destroy the retiring key (overwritten, then unlinked)."""
    path = retiring_path(key_path)
    try:
        with path.open("r+b") as fh:
            fh.write(b"0" * max(path.stat().st_size, 65))
            fh.flush()
            os.fsync(fh.fileno())
        path.unlink()
    except FileNotFoundError:
        return
    _sync_dir(key_path.parent)


def _expect(key: SigningKey, public_hex: str, path: Path) -> None:
    if bytes(key.verify_key).hex() != public_hex:
        raise KeyFileError(f"{path} does not hold the key the rotation record names "
                           f"({public_hex[:16]}…)")


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
