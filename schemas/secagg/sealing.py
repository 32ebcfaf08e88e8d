"""A member's two shares for one holder, sealed in a Box only that holder can open.

Member ``u`` sends holder ``v`` one payload: its share of ``u``'s self-mask seed and its share of
``u``'s mask private key, bound to the bucket and both ids. ``nacl.public.Box`` (X25519 +
XSalsa20-Poly1305) between their *sealing* keys authenticates ``u`` to ``v`` and hides the
shares from the server that relays them; the sealing key is not the mask key, so rebuilding a
dropped member's mask key opens none of its mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey

from .errors import Problem, SecAggError
from .shamir import Share

VERSION = 1
MAX_SEALED_BYTES = 1024  # two 70-byte shares, two ids and a bucket id, with room to spare


@dataclass(frozen=True, slots=True)
class SharePair:
    """``owner``'s two shares held by ``holder`` in ``bucket``."""

    bucket: str
    owner: str
    holder: str
    self_share: Share  # of the owner's self-mask seed: released if the owner survives
    key_share: Share  # of the owner's mask private key: released if the owner dropped

    def __post_init__(self) -> None:
        if self.self_share.x != self.key_share.x:
            raise SecAggError(Problem.BAD_SHARE, "the two shares of a holder share one x")


def seal_pair(pair: SharePair, sender: PrivateKey, recipient: PublicKey) -> bytes:
    """``pair`` encrypted and authenticated from ``sender`` (its owner) to ``recipient``."""
    body = msgpack.packb({
        "v": VERSION, "bucket": pair.bucket, "owner": pair.owner, "holder": pair.holder,
        "self": pair.self_share.to_bytes(), "key": pair.key_share.to_bytes(),
    })
    return bytes(Box(sender, recipient).encrypt(body))


def open_pair(sealed: bytes, recipient: PrivateKey, sender: PublicKey, *, bucket: str,
              owner: str, holder: str) -> SharePair:
    """The pair in ``sealed`` if ``sender`` sealed it to ``recipient`` for exactly this bucket,
    owner and holder; else :class:`SecAggError`."""
    if len(sealed) > MAX_SEALED_BYTES:
        raise SecAggError(Problem.BAD_SHARE, f"a sealed pair of {len(sealed)} bytes")
    try:
        body = Box(recipient, sender).decrypt(sealed)
    except CryptoError as exc:
        raise SecAggError(Problem.NOT_SEALED_FOR_US, f"share pair from {owner}") from exc
    pair = _decode(body)
    if (pair.bucket, pair.owner, pair.holder) != (bucket, owner, holder):
        raise SecAggError(Problem.BAD_SHARE,
                          f"a pair for {pair.bucket}/{pair.owner}→{pair.holder}, "
                          f"expected {bucket}/{owner}→{holder}")
    return pair


def _decode(body: bytes) -> SharePair:
    try:
        raw: Any = msgpack.unpackb(body, raw=False)
        if not isinstance(raw, dict) or raw.get("v") != VERSION:
            raise TypeError("not a version-1 share pair")
        fields = (raw["bucket"], raw["owner"], raw["holder"])
        if not all(isinstance(f, str) for f in fields):
            raise TypeError("ids are not strings")
        if not all(isinstance(raw[k], bytes) for k in ("self", "key")):
            raise TypeError("shares are not bytes")
        return SharePair(*fields, Share.from_bytes(raw["self"]), Share.from_bytes(raw["key"]))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise SecAggError(Problem.BAD_SHARE, f"malformed share pair: {exc}") from exc
