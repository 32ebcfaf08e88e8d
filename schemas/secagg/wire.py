"""The messages of a secure bucket's stages, and the packing of ring vectors.

Upstream (device → orchestrator) stages travel in the agent's outbox, inside ``updates``
batches, so they get the outbox's at-least-once delivery and the orchestrator's signed acks;
downstream stages go to ``down/{dev}/secagg``. Every one is an envelope signed by its sender::

    Task(bucket=BucketSpec)          orch → member   join the bucket, train on base version
    SecAggKeys                       member → orch   mask public key + one sealed share pair
                                                     per holder
    SecAggRelay                      orch → member   the neighbours' mask keys and the pairs
                                                     sealed to this member
    SecAggInput                      member → orch   the masked, quantised, weighted delta
    SecAggUnmask                     orch → member   survivors and dropped: which shares to send
    SecAggReveal                     member → orch   the shares asked for
    SecAggEnd                        orch → member   the bucket is done or abandoned: forget it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from ..messages import Message
from .errors import Problem, SecAggError

__all__ = [
    "LATE",
    "STAGE_TYPES",
    "RevealedShare",
    "SecAggEnd",
    "SecAggInput",
    "SecAggKeys",
    "SecAggRelay",
    "SecAggReveal",
    "SecAggUnmask",
    "pack_ring",
    "ring_bytes",
    "unpack_ring",
]


def ring_bytes(n: int, bits: int) -> int:
    """Bytes of ``n`` packed coordinates: masked values are uniform, so nothing compresses
    them; every bit of the ring is paid, and only those."""
    return (n * bits + 7) // 8


def pack_ring(values: npt.NDArray[np.uint32], bits: int) -> bytes:
    """``values`` (each below ``2^bits``) as a little-endian bit string, ``bits`` per value."""
    raw = np.ascontiguousarray(values, dtype="<u4").view(np.uint8).reshape(-1, 4)
    flat = np.unpackbits(raw, axis=1, bitorder="little")[:, :bits]
    return np.packbits(flat.reshape(-1), bitorder="little").tobytes()


def unpack_ring(data: bytes, n: int, bits: int) -> npt.NDArray[np.uint32]:
    """The ``n`` coordinates packed in ``data`` (exactly :func:`ring_bytes` long; the padding
    bits of the last byte must be zero)."""
    if not 1 <= bits <= 32 or n < 0:
        raise SecAggError(Problem.BAD_PARAMETER, f"{n} coordinates of {bits} bits")
    if len(data) != ring_bytes(n, bits):
        raise SecAggError(Problem.BAD_PARAMETER,
                          f"{len(data)} bytes for {n} coordinates of {bits} bits")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if flat[n * bits:].any():
        raise SecAggError(Problem.BAD_PARAMETER, "nonzero padding after the last coordinate")
    wide = np.zeros((n, 32), dtype=np.uint8)
    wide[:, :bits] = flat[: n * bits].reshape(n, bits)
    return np.packbits(wide, axis=1, bitorder="little").view("<u4").reshape(n).astype(np.uint32)


@dataclass(frozen=True, slots=True)
class SecAggKeys(Message):
    TYPE: ClassVar[str] = "secagg_keys"
    bucket_id: str
    mask_public: bytes
    shares: dict[str, bytes]
    """Holder id → the share pair sealed to it (``seal_pair``), one per holder."""


@dataclass(frozen=True, slots=True)
class SecAggRelay(Message):
    TYPE: ClassVar[str] = "secagg_relay"
    bucket_id: str
    keys: dict[str, bytes]
    """Neighbour id → mask public key, for the neighbours that advertised (and this member)."""
    shares: dict[str, bytes]
    """Owner id → the share pair it sealed to this member."""


@dataclass(frozen=True, slots=True)
class SecAggInput(Message):
    TYPE: ClassVar[str] = "secagg_input"
    bucket_id: str
    task_id: str
    num_samples: int
    weight: float
    n: int
    values: bytes
    """``n`` ring coordinates, :func:`pack_ring` at the bucket's width (``ring_bytes``)."""
    local_steps: int = 0
    train_loss: float = float("nan")
    train_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class SecAggUnmask(Message):
    TYPE: ClassVar[str] = "secagg_unmask"
    bucket_id: str
    request: int
    survivors: list[str]
    dropped: list[str]


@dataclass(frozen=True, slots=True)
class RevealedShare:
    owner: str
    kind: str
    share: bytes


@dataclass(frozen=True, slots=True)
class SecAggReveal(Message):
    TYPE: ClassVar[str] = "secagg_reveal"
    bucket_id: str
    request: int
    shares: list[RevealedShare] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SecAggEnd(Message):
    TYPE: ClassVar[str] = "secagg_end"
    bucket_id: str
    outcome: str
    """``done`` or ``abandoned``."""
    reason: str = ""


LATE = "secagg_closed"
"""The ack reason for a stage message that came after its bucket ended (a holder answering
after enough others had): expected, and no fault of the member."""

STAGE_TYPES: tuple[type[Message], ...] = (
    SecAggKeys, SecAggRelay, SecAggInput, SecAggUnmask, SecAggReveal, SecAggEnd)
UP_STAGES = frozenset(c.TYPE for c in (SecAggKeys, SecAggInput, SecAggReveal))
