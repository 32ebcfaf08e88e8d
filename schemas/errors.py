"""The typed exception tree of the wire protocol and the machine-readable rejection reasons.

Every rejection anywhere in fedmq carries a :class:`Reason`; metrics, the audit log, the update
ledger and acks all use the same string values, so an operator sees one vocabulary.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why something was refused. Values are stable: they appear in acks, ledgers and metrics."""

    # size and framing
    TOO_LARGE = "too_large"
    DECOMPRESSED_TOO_LARGE = "decompressed_too_large"
    BAD_COMPRESSION = "bad_compression"
    MALFORMED = "malformed"
    INVALID_FIELD = "invalid_field"
    UNSUPPORTED_VERSION = "unsupported_version"
    WRONG_TYPE = "wrong_type"
    BAD_TOPIC = "bad_topic"
    # authenticity
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SENDER = "unknown_sender"
    SENDER_MISMATCH = "sender_mismatch"
    WRONG_RECIPIENT = "wrong_recipient"
    REVOKED = "revoked"
    ISOLATED = "isolated"
    NOT_AUTHORIZED = "not_authorized"
    BAD_HMAC = "bad_hmac"
    WRONG_FEDERATION = "wrong_federation"
    # freshness
    REPLAY = "replay"
    DUPLICATE = "duplicate"
    FUTURE_TIMESTAMP = "future_timestamp"
    # tensors and model content
    TOO_MANY_TENSORS = "too_many_tensors"
    BAD_SHAPE = "bad_shape"
    BAD_CODEC = "bad_codec"
    DTYPE = "dtype"
    SHAPE_MISMATCH = "shape_mismatch"
    MISSING_TENSOR = "missing_tensor"
    UNEXPECTED_TENSOR = "unexpected_tensor"
    NON_FINITE = "non_finite"
    NORM_EXCEEDED = "norm_exceeded"
    STALE = "stale"
    UNKNOWN_VERSION = "unknown_version"
    HASH_MISMATCH = "hash_mismatch"
    # policy
    QUARANTINED = "quarantined"
    BUDGET_EXHAUSTED = "budget_exhausted"
    FEDERATION_STOPPED = "federation_stopped"
    RATE_LIMITED = "rate_limited"


class FedmqError(Exception):
    """Base of every error fedmq raises on purpose. ``reason`` is machine-readable."""

    reason: Reason

    def __init__(
        self,
        reason: Reason,
        detail: str = "",
        *,
        sender: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.reason = Reason(reason)
        self.detail = detail
        self.sender = sender
        self.seq = seq
        where = "".join(
            f" {k}={v}" for k, v in (("sender", sender), ("seq", seq)) if v is not None
        )
        super().__init__(f"{self.reason.value}: {detail}{where}" if detail else self.reason.value)


class EncodeError(FedmqError):
    """A message could not be encoded (a local programming or configuration error)."""


class DecodeError(FedmqError):
    """Bytes could not be turned into a message: framing, size, compression, msgpack."""


class ValidationError(DecodeError):
    """Decoded, but a field violates the schema. ``path`` names it, e.g. ``$.tensors[2].shape``."""

    def __init__(self, detail: str, *, path: str = "$", reason: Reason = Reason.INVALID_FIELD,
                 sender: str | None = None, seq: int | None = None) -> None:
        self.path = path
        super().__init__(reason, f"{detail} at {path}", sender=sender, seq=seq)


class SignatureError(FedmqError):
    """The signature does not verify against the expected key."""

    def __init__(self, detail: str = "signature does not verify", *,
                 sender: str | None = None, seq: int | None = None) -> None:
        super().__init__(Reason.BAD_SIGNATURE, detail, sender=sender, seq=seq)
