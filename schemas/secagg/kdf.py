"""Pairwise mask seeds: X25519 agreement, then BLAKE2b bound to the bucket and the ordered pair.

Both members of a pair derive the same 32-byte seed: the members' ids and mask public keys
enter in id order, so the derivation is symmetric, and the bucket id separates one secure
bucket's masks from every other's.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b
from nacl.utils import random

from .errors import Problem, SecAggError

KEY_BYTES = 32
_PERSON = b"fedmq:secagg:pm"
_ZERO = bytes(KEY_BYTES)


@dataclass(frozen=True, slots=True, repr=False)
class MaskKeyPair:
    """A member's X25519 mask-agreement key pair for one bucket (never its sealing key:
    this private key is secret-shared, and reconstructing it must open nothing else)."""

    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> MaskKeyPair:
        private = random(KEY_BYTES)
        return cls(private, crypto_scalarmult_base(private))

    def __repr__(self) -> str:
        return f"MaskKeyPair(public={self.public.hex()[:16]}…)"


def public_key(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    _check_key(private, "private key")
    return crypto_scalarmult_base(private)


def _check_key(key: bytes, what: str) -> None:
    if len(key) != KEY_BYTES:
        raise SecAggError(Problem.BAD_PARAMETER, f"an X25519 {what} is 32 bytes, not {len(key)}")


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def pair_seed(private: bytes, peer_public: bytes, *, bucket: str, member: str,
              peer: str) -> bytes:
    """The 32-byte mask seed ``member`` (holding ``private``) shares with ``peer``."""
    if member == peer:
        raise SecAggError(Problem.BAD_PARAMETER, f"{member} cannot pair with itself")
    _check_key(private, "private key")
    _check_key(peer_public, "public key")
    try:
        shared = crypto_scalarmult(private, peer_public)
    except CryptoError as exc:  # libsodium refuses a low-order peer key
        raise SecAggError(Problem.BAD_PARAMETER, f"unusable public key of {peer}") from exc
    if hmac.compare_digest(shared, _ZERO):
        raise SecAggError(Problem.BAD_PARAMETER, f"low-order public key of {peer}")
    mine = (member, crypto_scalarmult_base(private))
    (lo_id, lo_pk), (hi_id, hi_pk) = sorted([mine, (peer, peer_public)])
    message = b"".join(_field(v) for v in (bucket.encode(), lo_id.encode(), hi_id.encode(),
                                            lo_pk, hi_pk))
    return blake2b(message, digest_size=KEY_BYTES, key=shared, person=_PERSON,
                   encoder=RawEncoder)
