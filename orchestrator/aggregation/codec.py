"""A compact, bit-exact storage format for ``Params`` (deltas, model versions, moments).

Not the wire format (that is :mod:`schemas.tensors`): this one is what the orchestrator keeps on
disk. Layout::

    b"FMQP" | u8 format version | 3 zero bytes | u32 header length (little-endian)
    header: UTF-8 JSON [[name, dtype, [dims...]], ...]   (order = dict order)
    one zstd frame (with content size and checksum) of the raw little-endian tensor bytes,
    each tensor starting at a multiple of 8 bytes

Decoding bounds every size from the header, and checks the zstd frame declares exactly that
size, before allocating: a corrupt or hostile blob cannot make it allocate more.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import zstandard

from orchestrator.errors import OrchestratorError

from .strategy import Params

__all__ = ["DEFAULT_MAX_BYTES", "ParamsCodecError", "decode_params", "encode_params"]

_MAGIC = b"FMQP"
_FORMAT = 1
_PREFIX = struct.Struct("<4sB3xI")
_ALIGN = 8
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_MAX_TENSORS = 1_000_000
DEFAULT_MAX_BYTES = 4 * 1024**3
"""Largest total of raw tensor bytes :func:`decode_params` accepts by default."""

# Little-endian numeric dtypes only: params are float32; moments and counters may be others.
_DTYPES = {
    np.dtype(t).str: np.dtype(t)
    for t in ("<f4", "<f2", "<f8", "<i1", "<i2", "<i4", "<i8", "<u1", "<u2", "<u4", "<u8")
}


class ParamsCodecError(OrchestratorError, ValueError):
    """A blob is not a valid params encoding, or params cannot be encoded."""


# zstd contexts are costly to create (tens of µs, more than a small delta takes to compress)
# and not thread-safe: one of each per thread.
_contexts = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _contexts.__dict__.setdefault("c", {})
    cctx = cache.get(level)
    if cctx is None:
        cctx = cache[level] = zstandard.ZstdCompressor(
            level=level, write_content_size=True, write_checksum=True  # catches bit rot
        )
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = _contexts.__dict__.get("d")
    if dctx is None:
        dctx = _contexts.d = zstandard.ZstdDecompressor()
    return dctx


def _padded(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def encode_params(params: Mapping[str, np.ndarray], *, level: int = 3) -> bytes:
    """Encode named tensors losslessly (every bit, NaN payloads included)."""
    header: list[list[Any]] = []
    arrays: list[np.ndarray] = []
    total = 0
    for name, value in params.items():
        if not isinstance(name, str):
            raise ParamsCodecError(f"tensor names must be str, got {type(name).__name__}")
        if not isinstance(value, np.ndarray):
            raise ParamsCodecError(f"tensor {name!r} is {type(value).__name__}, not ndarray")
        dtype = value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
        if dtype.str not in _DTYPES:
            raise ParamsCodecError(f"tensor {name!r} has unsupported dtype {value.dtype}")
        arr = np.asarray(value, dtype=dtype, order="C")  # keeps 0-d (ascontiguousarray would not)
        header.append([name, dtype.str, list(arr.shape)])
        arrays.append(arr)
        total += _padded(arr.nbytes)
    head = json.dumps(header, separators=(",", ":")).encode()
    parts: list[bytes | memoryview] = []
    for arr in arrays:
        parts.append(arr.reshape(-1).view(np.uint8).data)
        pad = _padded(arr.nbytes) - arr.nbytes
        if pad:
            parts.append(b"\0" * pad)
    body = _compressor(level).compress(b"".join(parts))
    return b"".join((_PREFIX.pack(_MAGIC, _FORMAT, len(head)), head, body))


def _parse_header(
    blob: bytes | memoryview, max_bytes: int
) -> tuple[list[tuple[str, np.dtype[Any], tuple[int, ...]]], int, int]:
    if len(blob) < _PREFIX.size:
        raise ParamsCodecError("blob too short")
    magic, fmt, head_len = _PREFIX.unpack_from(blob)
    if magic != _MAGIC:
        raise ParamsCodecError("not a params blob (bad magic)")
    if fmt != _FORMAT:
        raise ParamsCodecError(f"unsupported params format {fmt}")
    if head_len > _MAX_HEADER_BYTES or _PREFIX.size + head_len > len(blob):
        raise ParamsCodecError("header length out of range")
    try:
        raw = json.loads(bytes(blob[_PREFIX.size : _PREFIX.size + head_len]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ParamsCodecError(f"unreadable header: {exc}") from None
    if not isinstance(raw, list) or len(raw) > _MAX_TENSORS:
        raise ParamsCodecError("header must be a list of tensors")
    entries: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = []
    seen: set[str] = set()
    total = 0
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 3):
            raise ParamsCodecError(f"header entry {i} is malformed")
        name, dtype_str, dims = item
        if not isinstance(name, str) or name in seen:
            raise ParamsCodecError(f"header entry {i}: bad or duplicate name")
        dtype = _DTYPES.get(dtype_str) if isinstance(dtype_str, str) else None
        if dtype is None:
            raise ParamsCodecError(f"tensor {name!r}: unsupported dtype {dtype_str!r}")
        if not (isinstance(dims, list) and len(dims) <= 32 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims
        )):
            raise ParamsCodecError(f"tensor {name!r}: bad shape {dims!r}")
        count = 1
        for d in dims:
            count *= d
        total += _padded(count * dtype.itemsize)
        if total > max_bytes:
            raise ParamsCodecError(f"tensors exceed {max_bytes} bytes")
        seen.add(name)
        entries.append((name, dtype, tuple(dims)))
    return entries, _PREFIX.size + head_len, total


def decode_params(blob: bytes | memoryview, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Params:
    """Decode :func:`encode_params` output into fresh, writable, C-contiguous arrays."""
    entries, body_at, total = _parse_header(blob, max_bytes)
    body = memoryview(blob)[body_at:]
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError as exc:
        raise ParamsCodecError(f"bad zstd frame: {exc}") from None
    if declared != total:
        raise ParamsCodecError(f"payload size {declared} does not match header ({total})")
    try:
        # the frame's declared size was checked against the bounded header total above,
        # so this allocates at most ``max_bytes``; trailing bytes or frames are refused
        raw = _decompressor().decompress(body, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ParamsCodecError(f"corrupt payload: {exc}") from None
    if len(raw) != total:
        raise ParamsCodecError(f"payload is {len(raw)} bytes, header says {total}")
    # one aligned, writable copy that every tensor views
    buf = np.frombuffer(raw, dtype=np.uint8).copy()
    out: Params = {}
    offset = 0
    for name, dtype, shape in entries:
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = buf[offset : offset + count * dtype.itemsize].view(dtype).reshape(shape)
        offset += _padded(count * dtype.itemsize)
    return out
