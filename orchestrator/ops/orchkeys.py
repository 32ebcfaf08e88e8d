"""The orchestrator key(s) an operator tool trusts, across a rotation of the orchestrator's key.

The bundle pins the orchestrator's key when the operator is added. A rotation
(``fedmq orchestrator rotate-key``) is followed as the agent follows it: the retained
``KeyAnnouncement`` on ``fl/{fed}/model/key`` is adopted only when it verifies with the key
trusted now, names this federation and the orchestrator, names that key as the old one, carries
a valid proof by the new key, and the old key's retirement is still ahead. The adopted ring is
kept in ``BUNDLE.orchkeys`` (mode 0600, JSON, replaced atomically) so later runs trust the new
key even after the announcement is gone; the old key is still accepted until the new one has
signed a message in this session or its announced retirement passes.

An announcement no trusted key verifies (forged, or from another federation) is ignored with
its reason; one whose retirement has passed means this bundle missed the whole grace period:
:class:`KeyLostError`, one line telling the operator to get a new bundle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey

from orchestrator.errors import OrchestratorError
from schemas.envelope import Opened, check_header, decode_body, verify
from schemas.errors import FedmqError, Reason, SignatureError
from schemas.messages import KeyAnnouncement
from schemas.signing import check_announcement_proof, key_id
from schemas.topics import ORCHESTRATOR_SENDER

__all__ = ["KeyLostError", "Ring", "TrustedKeys", "keys_path"]

_FORMAT = 1


class KeyLostError(OrchestratorError):
    """The orchestrator's key changed and this bundle missed the whole grace period."""


def keys_path(bundle_path: Path) -> Path:
    """Where the adopted orchestrator keys live: beside the bundle."""
    return bundle_path.with_name(bundle_path.name + ".orchkeys")


@dataclass(frozen=True, slots=True)
class Ring:
    current: bytes
    previous: bytes | None = None
    retire_ms: int = 0
    history: tuple[bytes, ...] = field(default=())

    def knows(self, key: bytes) -> bool:
        return key == self.current or key == self.previous or key in self.history

    def to_json(self) -> str:
        return json.dumps({
            "format": _FORMAT, "current": self.current.hex(),
            "previous": self.previous.hex() if self.previous is not None else None,
            "retire_ms": self.retire_ms, "history": [k.hex() for k in self.history],
        }) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Ring:
        raw: Any = json.loads(text)
        if raw["format"] != _FORMAT:
            raise ValueError(f"unknown format {raw['format']!r}")
        previous = raw["previous"]
        return cls(bytes.fromhex(raw["current"]),
                   bytes.fromhex(previous) if previous is not None else None,
                   int(raw["retire_ms"]), tuple(bytes.fromhex(k) for k in raw["history"]))


class TrustedKeys:
    """The ring for one bundle. ``load`` and ``save`` block (file I/O): run them in a thread."""

    def __init__(self, path: Path, bundle_key: bytes, *, fed: str,
                 now_ms: Callable[[], int]) -> None:
        self._path = path
        self._bundle_key = bundle_key
        self._fed = fed
        self._now_ms = now_ms
        self.ring = Ring(bundle_key)
        self._current_seen = False

    def load(self) -> None:
        """The saved ring, if it descends from the bundle's key (a newer bundle wins)."""
        try:
            ring = Ring.from_json(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OrchestratorError(f"{self._path}: unreadable orchestrator keys ({exc}); "
                                    "remove it to trust the bundle's key again") from None
        if ring.knows(self._bundle_key):
            self.ring = ring

    def verify(self, payload: bytes) -> Opened:
        """Verify with the current key, or the previous one until the current has signed
        something (in this session) or the previous key's retirement passes."""
        ring = self.ring
        try:
            opened = verify(payload, VerifyKey(ring.current))
        except SignatureError:
            if (ring.previous is None or self._current_seen
                    or self._now_ms() >= ring.retire_ms):
                raise
            return verify(payload, VerifyKey(ring.previous))
        self._current_seen = True
        return opened

    def adopt(self, payload: bytes) -> Ring | None:
        """The ring after the announcement in ``payload`` (not yet saved), None when there is
        nothing to adopt; ``FedmqError`` (with its reason) when it must be ignored,
        :class:`KeyLostError` when the grace period is over."""
        ring = self.ring
        message = self._open(payload)
        if message is None or message.new_public_key == ring.current:
            return None
        if message.old_public_key != ring.current:
            raise FedmqError(Reason.INVALID_FIELD, "the announcement names another old key")
        if not check_announcement_proof(message.new_public_key, message.proof, fed=self._fed,
                                        old_public_key=message.old_public_key):
            raise FedmqError(Reason.BAD_SIGNATURE, "the new key's proof does not verify")
        if self._now_ms() >= message.retire_after_ms:
            raise KeyLostError(
                f"the orchestrator's key changed (to {key_id(message.new_public_key)}) and this "
                f"bundle missed the announcement (the old key retired at "
                f"{message.retire_after_ms} ms): get a new operator bundle")
        return Ring(message.new_public_key, ring.current, message.retire_after_ms,
                    (*ring.history, ring.current))

    def _open(self, payload: bytes) -> KeyAnnouncement | None:
        ring = self.ring
        try:
            opened = verify(payload, VerifyKey(ring.current))
        except SignatureError:
            if any(_signed_by(payload, k) for k in (ring.previous, *ring.history) if k):
                return None  # an announcement this ring already followed
            raise SignatureError("the key announcement is not signed by an orchestrator key "
                                 f"this bundle trusts ({key_id(ring.current)})") from None
        check_header(opened.header, fed=self._fed, sender=ORCHESTRATOR_SENDER,
                     now_ms=self._now_ms(), recipient="")
        return decode_body(opened, KeyAnnouncement)

    def save(self, ring: Ring) -> None:
        """Write ``ring`` durably (temp file, fsync, rename, fsync the directory), then use
        it."""
        directory = self._path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(ring.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.ring = ring
        self._current_seen = False


def _signed_by(payload: bytes, key: bytes) -> bool:
    try:
        verify(payload, VerifyKey(key))
    except SignatureError:
        return False
    return True
