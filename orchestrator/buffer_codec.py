"""How the service keeps an accepted delta in the store's aggregation buffer.

An int8-coded update is kept as it was sent: for each tensor ``N``, ``N`` (the int8 values in
N's shape), ``N@scales`` (float32) and ``N@chunk`` (a 0-d int64). That is a quarter of the
float32 size and costs no re-compression (what makes ingestion of large models fast); turning it
back calls the wire decoder itself, so the restored delta is bit-identical to the one that was
validated at ingestion. Updates in other codecs are kept as their decoded float32 tensors.
The form is self-describing: :func:`from_stored` needs nothing else.

:func:`encode_buffered` turns the form into the store's blob (:mod:`.aggregation.codec`) where
the update is judged, in the decode worker, so the service moves and caches the blob alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from orchestrator.aggregation.codec import decode_params, encode_params
from schemas.messages import Update
from schemas.tensors import Codec, EncodedTensor, Params, decode_tensor

__all__ = ["decode_buffered", "encode_buffered", "from_stored", "to_stored"]

_SCALES = "@scales"
_CHUNK = "@chunk"
# Buffer rows live only until their version is made, and int8 values barely compress (13% at
# level 1, for 2.5x the CPU of level -1): the fastest level keeps the frame and its checksum.
_LEVEL = -1


def to_stored(update: Update, delta: Params) -> tuple[Params, str]:
    """The buffer form of a validated update and its decoded ``delta``; and its name."""
    if not update.tensors or any(t.codec is not Codec.INT8 for t in update.tensors):
        return delta, "float32"
    out: Params = {}
    for t in update.tensors:
        out[t.name] = np.frombuffer(t.data, dtype=np.int8).reshape(t.shape)
        out[t.name + _SCALES] = np.frombuffer(t.scales, dtype="<f4")
        out[t.name + _CHUNK] = np.array(t.chunk, dtype=np.int64)
    return out, "int8"


def from_stored(stored: Mapping[str, np.ndarray]) -> Params:
    """The float32 delta of a buffer entry written by :func:`to_stored`."""
    if not any(name.endswith(_SCALES) for name in stored):
        return {name: np.asarray(value, dtype=np.float32) for name, value in stored.items()}
    out: Params = {}
    for name, q in stored.items():
        if name.endswith((_SCALES, _CHUNK)):
            continue
        tensor = EncodedTensor(
            name, [int(d) for d in q.shape], Codec.INT8, np.ascontiguousarray(q).tobytes(),
            np.ascontiguousarray(stored[name + _SCALES], dtype="<f4").tobytes(),
            int(stored[name + _CHUNK]),
        )
        out[name] = decode_tensor(tensor)
    return out


def encode_buffered(update: Update, delta: Params) -> tuple[bytes, str]:
    """The store blob of :func:`to_stored`'s form, and the form's name."""
    stored, form = to_stored(update, delta)
    return encode_params(stored, level=_LEVEL), form


def decode_buffered(blob: bytes) -> Params:
    """The float32 delta of a blob from :func:`encode_buffered` (or from the store's buffer).
    Raises ``ParamsCodecError`` for a blob that is not one."""
    return from_stored(decode_params(blob))
