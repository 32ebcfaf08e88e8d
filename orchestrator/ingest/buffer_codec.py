"""How the service keeps an accepted delta in the store's aggregation buffer.

An update coded int8 or top-k is kept as it was sent, per tensor ``N``: ``N`` (the int8
values; in N's shape for int8, the k kept values for top-k) and ``N@scales`` (float32), with
``N@chunk`` (a 0-d int64) for int8, or ``N@indices`` (uint32) and ``N@shape`` (int64) for
top-k. That is a quarter of the float32 size for int8 and a few percent for top-k, and costs
no re-encoding; turning it back calls the wire decoder itself, so the restored delta is
bit-identical to the one that was validated at ingestion. Updates with a float32 or float16
tensor are kept as their decoded float32 tensors. The form is self-describing:
:func:`from_stored` needs nothing else.

:func:`encode_buffered` turns the form into the store's blob (:mod:`.aggregation.codec`) where
the update is judged, in the decode worker, so the service moves and caches the blob alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from orchestrator.aggregation.codec import decode_params, encode_params
from schemas.messages import Update
from schemas.tensors import Codec, EncodedTensor, Params, decode_tensor

__all__ = ["decode_buffered", "encode_buffered", "encode_float32", "from_stored", "to_stored"]

_SCALES = "@scales"
_CHUNK = "@chunk"
_INDICES = "@indices"
_SHAPE = "@shape"
_SUFFIXES = (_SCALES, _CHUNK, _INDICES, _SHAPE)
_KEPT = (Codec.INT8, Codec.TOPK)
# Buffer rows live only until their version is made, and int8 values barely compress (13% at
# level 1, for 2.5x the CPU of level -1): the fastest level keeps the frame and its checksum.
_LEVEL = -1


def to_stored(update: Update, delta: Params) -> tuple[Params, str]:
    """The buffer form of a validated update and its decoded ``delta``; and its name
    (``int8``, ``topk``, ``int8+topk`` or ``float32``)."""
    if not update.tensors or any(t.codec not in _KEPT for t in update.tensors):
        return delta, "float32"
    out: Params = {}
    for t in update.tensors:
        out[t.name + _SCALES] = np.frombuffer(t.scales, dtype="<f4")
        if t.codec is Codec.INT8:
            out[t.name] = np.frombuffer(t.data, dtype=np.int8).reshape(t.shape)
            out[t.name + _CHUNK] = np.array(t.chunk, dtype=np.int64)
        else:
            out[t.name] = np.frombuffer(t.data, dtype=np.int8)
            out[t.name + _INDICES] = np.frombuffer(t.indices, dtype="<u4")
            out[t.name + _SHAPE] = np.array(t.shape, dtype=np.int64)
    codecs = sorted({t.codec.value for t in update.tensors})
    return out, "+".join(codecs)


def from_stored(stored: Mapping[str, np.ndarray]) -> Params:
    """The float32 delta of a buffer entry written by :func:`to_stored`."""
    if not any(name.endswith(_SCALES) for name in stored):
        return {name: np.asarray(value, dtype=np.float32) for name, value in stored.items()}
    out: Params = {}
    for name, q in stored.items():
        if name.endswith(_SUFFIXES):
            continue
        scales = np.ascontiguousarray(stored[name + _SCALES], dtype="<f4").tobytes()
        values = np.ascontiguousarray(q).tobytes()
        indices = stored.get(name + _INDICES)
        if indices is None:
            tensor = EncodedTensor(name, [int(d) for d in q.shape], Codec.INT8, values, scales,
                                   int(stored[name + _CHUNK]))
        else:
            tensor = EncodedTensor(
                name, [int(d) for d in stored[name + _SHAPE]], Codec.TOPK, values, scales,
                indices=np.ascontiguousarray(indices, dtype="<u4").tobytes())
        out[name] = decode_tensor(tensor)
    return out


def encode_buffered(update: Update, delta: Params) -> tuple[bytes, str]:
    """The store blob of :func:`to_stored`'s form, and the form's name."""
    stored, form = to_stored(update, delta)
    return encode_params(stored, level=_LEVEL), form


def encode_float32(delta: Params) -> bytes:
    """The store blob of a float32 delta that arrived as no update (a secure bucket's mean)."""
    return encode_params(delta, level=_LEVEL)


def decode_buffered(blob: bytes) -> Params:
    """The float32 delta of a blob from :func:`encode_buffered` (or from the store's buffer).
    Raises ``ParamsCodecError`` for a blob that is not one."""
    return from_stored(decode_params(blob))
