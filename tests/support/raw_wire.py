"""A hand-rolled wire kit for hostile-peer tests.

:class:`RawWire` builds hostile messages with msgpack, zstandard and pynacl directly — never
``schemas.pack`` — by taking apart a valid message captured off the broker and putting it back
together changed (a raw attacker's view of the wire format in docs/wire-protocol.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import zstandard
from nacl.signing import SigningKey

from schemas import Params


def params_digest(params: Params) -> str:
    """SHA-256 over the parameters' names, dtypes, shapes and bytes (model identity)."""
    h = hashlib.sha256()
    for name in sorted(params):
        value = params[name]
        h.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


class RawWire:
    """Take apart and rebuild signed envelopes (``msgpack([signed_bytes, signature])``)."""

    @staticmethod
    def open(envelope: bytes) -> tuple[dict[str, Any], bytes]:
        """``(header map with body, signature)`` of an envelope, without verifying anything."""
        signed, signature = msgpack.unpackb(envelope, raw=False)
        return msgpack.unpackb(signed, raw=False), signature

    @staticmethod
    def sign(header: dict[str, Any], key: SigningKey) -> bytes:
        signed = msgpack.packb(header, use_bin_type=True)
        return msgpack.packb([signed, key.sign(signed).signature], use_bin_type=True)

    @staticmethod
    def body(header: dict[str, Any]) -> dict[str, Any]:
        """The decoded body of a plain (``enc == "zstd"``) message."""
        assert header["enc"] == "zstd", header["enc"]
        out: dict[str, Any] = msgpack.unpackb(
            zstandard.ZstdDecompressor().decompress(header["body"]), raw=False)
        return out

    @staticmethod
    def with_body(header: dict[str, Any], body: dict[str, Any] | bytes) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else msgpack.packb(body, use_bin_type=True)
        return {**header, "body": zstandard.ZstdCompressor().compress(raw)}

    @staticmethod
    def batch(*entries: bytes) -> bytes:
        return msgpack.packb(list(entries), use_bin_type=True)

    @staticmethod
    def entries(batch: bytes) -> list[bytes]:
        out: list[bytes] = msgpack.unpackb(batch, raw=False)
        return out
