"""The signed envelope every message travels in.

Wire format: ``msgpack([signed_bytes, signature])`` where ``signed_bytes`` is
``msgpack({v, type, fed, sender, seq, ts_ms, enc, body})`` and ``signature`` is Ed25519 over
exactly ``signed_bytes``. ``body`` is zstd-compressed msgpack of the message's fields, or —
``enc == "sealed"`` — that zstd frame sealed to the receiver's key with a NaCl SealedBox
(confidential against the broker; the signature still covers the sealed bytes).

Receivers verify **before** unpacking the inner map, with the key they already hold for the
claimed sender (known from the topic, which the broker ACL ties to the MQTT username).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from ._convert import from_wire, to_wire
from .compress import compress, decompress
from .errors import DecodeError, EncodeError, FedmqError, Reason, SignatureError, ValidationError
from .limits import DEFAULT_LIMITS, Limits
from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, Enroll, Message, UpdateBatch

M = TypeVar("M", bound=Message)

ENC_ZSTD = "zstd"
ENC_SEALED = "sealed"
SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class Header:
    v: int
    type: str
    fed: str
    sender: str
    seq: int
    ts_ms: int
    enc: str = ENC_ZSTD
    to: str = ""
    """The one device a downstream message is for ("" = everyone, e.g. a model)."""


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified (or, for ``enroll`` only, self-certified) envelope whose body is still raw."""

    header: Header
    body: bytes


def seal_key(verify_key: VerifyKey) -> PublicKey:
    """The Curve25519 key to seal bodies to, derived from an Ed25519 identity key."""
    return verify_key.to_curve25519_public_key()


def unseal_key(signing_key: SigningKey) -> PrivateKey:
    return signing_key.to_curve25519_private_key()


def pack(
    message: Message,
    *,
    key: SigningKey,
    fed: str,
    sender: str,
    seq: int,
    ts_ms: int,
    seal_to: PublicKey | None = None,
    to: str = "",
    level: int = 3,
) -> bytes:
    """Encode, compress, optionally seal, and sign ``message``.

    ``to`` names the recipient of a message meant for one device, so a broker cannot hand
    device A's ack or command to device B. A sealed body carries ``[fed, sender, seq]`` inside
    the box, so nobody can re-sign another sender's sealed bytes as their own.
    """
    try:
        body = compress(msgpack.packb(to_wire(message), use_bin_type=True), level)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(Reason.MALFORMED, f"cannot encode {type(message).__name__}: {exc}"
                          ) from exc
    enc = ENC_ZSTD
    if seal_to is not None:
        bound = msgpack.packb([fed, sender, seq, body], use_bin_type=True)
        body = SealedBox(seal_to).encrypt(bound)
        enc = ENC_SEALED
    signed = msgpack.packb(
        {"v": PROTOCOL_VERSION, "type": message.TYPE, "fed": fed, "sender": sender,
         "seq": seq, "ts_ms": ts_ms, "enc": enc, "to": to, "body": body},
        use_bin_type=True,
    )
    signature = key.sign(signed).signature
    out: bytes = msgpack.packb([signed, signature], use_bin_type=True)
    return out


def resign(data: bytes, key: SigningKey, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The same envelope signed by ``key`` instead (a device whose key rotated re-signs what
    is still in its outbox: the signed bytes — sender, seq, sealed body — stay as they are)."""
    signed, _ = split(data, limits)
    out: bytes = msgpack.packb([signed, key.sign(signed).signature], use_bin_type=True)
    return out


def split(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[bytes, bytes]:
    """The outer frame: ``(signed_bytes, signature)``. Nothing inside is looked at yet."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(Reason.MALFORMED, "payload is not bytes")
    if len(data) > limits.max_envelope_bytes:
        raise DecodeError(Reason.TOO_LARGE,
                          f"{len(data)} bytes exceeds the cap of {limits.max_envelope_bytes}")
    outer = _unpack(bytes(data), max_bin_len=limits.max_envelope_bytes, max_array_len=2,
                    max_map_len=0, max_str_len=0)
    if (not isinstance(outer, list) or len(outer) != 2 or not isinstance(outer[0], bytes)
            or not isinstance(outer[1], bytes)):
        raise DecodeError(Reason.MALFORMED, "envelope is not [signed_bytes, signature]")
    if len(outer[1]) != SIGNATURE_BYTES:
        raise DecodeError(Reason.MALFORMED, "signature has the wrong length")
    return outer[0], outer[1]


def verify(data: bytes, key: VerifyKey, limits: Limits = DEFAULT_LIMITS) -> Opened:
    """Check the signature with ``key``, then (only then) parse the signed header."""
    signed, signature = split(data, limits)
    try:
        key.verify(signed, signature)
    except (BadSignatureError, CryptoError):
        raise SignatureError() from None
    return _parse_signed(signed, limits)


def open_enroll(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, Enroll]:
    """An ``enroll`` is signed by the key it carries: parse it, then verify with that key.

    This proves possession of the key only; the caller must still check the HMAC.
    """
    signed, signature = split(data, limits)
    opened = _parse_signed(signed, limits)
    message = decode_body(opened, Enroll, limits)
    try:
        VerifyKey(message.public_key).verify(signed, signature)
    except (BadSignatureError, CryptoError, ValueError):
        raise SignatureError(sender=opened.header.sender, seq=opened.header.seq) from None
    if message.device_id != opened.header.sender:
        raise FedmqError(Reason.SENDER_MISMATCH, "enroll device_id differs from sender",
                         sender=opened.header.sender)
    return opened.header, message


def decode_body(
    opened: Opened,
    expected: type[M],
    limits: Limits = DEFAULT_LIMITS,
    unseal: PrivateKey | Sequence[PrivateKey] | None = None,
) -> M:
    """Decompress (after unsealing) and validate the body as ``expected``. ``unseal`` may be
    several keys (the orchestrator's current and retiring keys during a rotation), tried in
    order."""
    h = opened.header
    if h.type != expected.TYPE:
        raise DecodeError(Reason.WRONG_TYPE, f"expected {expected.TYPE!r}, got {h.type!r}",
                          sender=h.sender, seq=h.seq)
    body = opened.body
    if h.enc == ENC_SEALED:
        bound = _unseal(body, unseal, h)
        inner = _unpack(bound, max_bin_len=limits.max_envelope_bytes,
                        max_str_len=limits.max_string, max_array_len=4, max_map_len=0)
        if (not isinstance(inner, list) or len(inner) != 4
                or not isinstance(inner[3], bytes)):
            raise DecodeError(Reason.MALFORMED, "sealed body is not [fed, sender, seq, body]",
                              sender=h.sender, seq=h.seq)
        if inner[:3] != [h.fed, h.sender, h.seq]:
            raise DecodeError(Reason.SENDER_MISMATCH,
                              "sealed body was made by another sender or for another seq",
                              sender=h.sender, seq=h.seq)
        body = inner[3]
    elif h.enc != ENC_ZSTD:
        raise DecodeError(Reason.MALFORMED, f"unknown body encoding {h.enc!r}",
                          sender=h.sender, seq=h.seq)
    try:
        raw = decompress(body, limits.max_body_bytes)
        fields = _unpack(raw, max_bin_len=limits.max_body_bytes,
                         max_str_len=limits.max_string, max_array_len=limits.max_list,
                         max_map_len=limits.max_list)
        if not isinstance(fields, dict):
            raise DecodeError(Reason.MALFORMED, "body is not a map")
        message: M = from_wire(expected, fields, limits)
    except FedmqError as exc:
        exc.sender, exc.seq = h.sender, h.seq
        raise
    return message


def _unseal(body: bytes, unseal: PrivateKey | Sequence[PrivateKey] | None,
            h: Header) -> bytes:
    keys = () if unseal is None else (unseal,) if isinstance(unseal, PrivateKey) else unseal
    if not keys:
        raise DecodeError(Reason.MALFORMED, "sealed body but no key to open it",
                          sender=h.sender, seq=h.seq)
    for key in keys:
        try:
            opened: bytes = SealedBox(key).decrypt(body)
        except CryptoError:
            continue
        return opened
    raise DecodeError(Reason.MALFORMED, "sealed body does not open", sender=h.sender,
                      seq=h.seq)


def decode(
    data: bytes,
    key: VerifyKey,
    expected: type[M],
    limits: Limits = DEFAULT_LIMITS,
    unseal: PrivateKey | None = None,
) -> tuple[Header, M]:
    """Verify and decode in one call (the common case for a receiver with one sender key)."""
    opened = verify(data, key, limits)
    return opened.header, decode_body(opened, expected, limits, unseal)


def message_type(opened: Opened) -> type[Message]:
    cls = MESSAGE_TYPES.get(opened.header.type)
    if cls is None:
        raise DecodeError(Reason.WRONG_TYPE, f"unknown message type {opened.header.type!r}")
    return cls


def check_header(
    header: Header,
    *,
    fed: str,
    sender: str | None,
    now_ms: int,
    limits: Limits = DEFAULT_LIMITS,
    recipient: str | None = None,
) -> None:
    """Bind a verified header to this federation, the topic's sender, the receiver's clock
    and — for downstream messages, pass ``recipient`` — the receiving device."""
    if header.fed != fed:
        raise FedmqError(Reason.WRONG_FEDERATION, f"message for federation {header.fed!r}",
                         sender=header.sender, seq=header.seq)
    if sender is not None and header.sender != sender:
        raise FedmqError(Reason.SENDER_MISMATCH,
                         f"signed by {header.sender!r} but published as {sender!r}",
                         sender=header.sender, seq=header.seq)
    if recipient is not None and header.to != recipient:
        raise FedmqError(Reason.WRONG_RECIPIENT,
                         f"addressed to {header.to!r}, not {recipient!r}",
                         sender=header.sender, seq=header.seq)
    if header.ts_ms > now_ms + limits.max_future_skew_ms:
        raise FedmqError(Reason.FUTURE_TIMESTAMP,
                         f"timestamp {header.ts_ms - now_ms} ms in the future",
                         sender=header.sender, seq=header.seq)


def _parse_signed(signed: bytes, limits: Limits) -> Opened:
    inner = _unpack(signed, max_bin_len=limits.max_envelope_bytes,
                    max_str_len=limits.max_string, max_array_len=0, max_map_len=16)
    if not isinstance(inner, dict):
        raise DecodeError(Reason.MALFORMED, "signed part is not a map")
    if inner.get("v") != PROTOCOL_VERSION:
        raise DecodeError(Reason.UNSUPPORTED_VERSION, f"protocol version {inner.get('v')!r}")
    body = inner.get("body")
    if not isinstance(body, bytes):
        raise ValidationError("body must be bytes", path="$.body")
    header = from_wire(Header, inner, limits)
    if header.seq < 0 or header.ts_ms < 0:
        raise ValidationError("seq and ts_ms must be >= 0", path="$")
    if not header.sender or not header.fed:
        raise ValidationError("sender and fed must be non-empty", path="$")
    return Opened(header, body)


def _unpack(data: bytes, **bounds: int) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_ext_len=0, **bounds)
    except Exception as exc:  # hostile input reaches several undocumented msgpack errors
        raise DecodeError(Reason.MALFORMED, f"bad msgpack: {type(exc).__name__}") from None


def pack_batch(batch: UpdateBatch) -> bytes:
    """An ``updates`` payload: a msgpack array of signed ``update`` envelopes."""
    out: bytes = msgpack.packb(batch.entries, use_bin_type=True)
    return out


def unpack_batch(data: bytes, limits: Limits = DEFAULT_LIMITS) -> UpdateBatch:
    if len(data) > limits.max_envelope_bytes:
        raise DecodeError(Reason.TOO_LARGE,
                          f"{len(data)} bytes exceeds the cap of {limits.max_envelope_bytes}")
    entries = _unpack(bytes(data), max_bin_len=limits.max_envelope_bytes,
                      max_array_len=limits.max_batch_entries, max_map_len=0, max_str_len=0)
    if not isinstance(entries, list) or not all(isinstance(e, bytes) for e in entries):
        raise DecodeError(Reason.MALFORMED, "updates batch is not an array of envelopes")
    return UpdateBatch(entries)
