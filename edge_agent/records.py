"""The values the agent keeps in its state file, and the blob format of its parameters.

Plain frozen records (no I/O): what the orchestrator answered to our enrollment, the model the
device holds, and an outbox entry with or without its envelope. Parameters are stored as a
msgpack list of ``[name, shape, float32 bytes]`` in graph order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack
import numpy as np

from schemas import EnrollStatus, Params
from schemas.annex import ModelAnnex

from .errors import StateError

__all__ = ["Enrollment", "OutboxEntry", "OutboxRow", "StoredModel", "params_from_blob",
           "params_to_blob"]

_F32 = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What the orchestrator answered to our ``Enroll``."""

    status: EnrollStatus
    heartbeat_s: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StoredModel:
    """The global model the device holds (float32 parameters in graph order)."""

    version: int
    params: Params
    graphs: dict[str, bytes]
    arch_id: str = ""
    stopped: bool = False
    annex: ModelAnnex = field(default_factory=ModelAnnex)
    """What the version carries besides its parameters (standardisation, threshold)."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    envelope: bytes
    created_ms: int
    attempts: int
    last_sent_ms: int | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An entry's bookkeeping without its (possibly large) envelope."""

    seq: int
    size: int
    created_ms: int
    attempts: int
    last_sent_ms: int | None


def params_to_blob(params: Params) -> bytes:
    items = [
        [name, list(value.shape), np.ascontiguousarray(value, dtype=_F32).tobytes()]
        for name, value in params.items()
    ]
    out: bytes = msgpack.packb(items, use_bin_type=True)
    return out


def params_from_blob(blob: bytes) -> Params:
    try:
        items = msgpack.unpackb(blob, raw=False)
        out: Params = {}
        for name, shape, data in items:
            out[str(name)] = np.frombuffer(data, dtype=_F32).astype(np.float32).reshape(shape)
        return out
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StateError(f"stored parameters are malformed ({exc})") from None
