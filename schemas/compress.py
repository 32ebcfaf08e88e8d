"""zstd with a hard cap on the decompressed size (no zstd bombs)."""

from __future__ import annotations

import threading

import zstandard

from .errors import DecodeError, Reason

_MAGIC = b"\x28\xb5\x2f\xfd"
# zstd contexts must not be used by two threads at once (it corrupts the heap), and receivers
# decode in worker threads: one set of contexts per thread.
_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx: zstandard.ZstdDecompressor | None = _local.__dict__.get("d")
    if dctx is None:
        dctx = _local.d = zstandard.ZstdDecompressor()
    return dctx


def compress(data: bytes, level: int = 3) -> bytes:
    """Compress ``data`` into one zstd frame that records its content size."""
    return _compressor(level).compress(data)


def decompress(data: bytes, max_size: int) -> bytes:
    """Decompress one zstd frame, refusing anything that would exceed ``max_size`` bytes.

    A frame that declares its size is checked before any output buffer exists; a frame
    without one is streamed and cut off after ``max_size + 1`` bytes, so the work done on a
    bomb is bounded by the cap, not by what it claims to expand to.
    """
    if len(data) < 4 or data[:4] != _MAGIC:
        raise DecodeError(Reason.BAD_COMPRESSION, "not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise DecodeError(Reason.BAD_COMPRESSION, f"bad zstd frame header: {exc}") from None
    size = params.content_size
    if size != zstandard.CONTENTSIZE_UNKNOWN and size > max_size:
        raise DecodeError(
            Reason.DECOMPRESSED_TOO_LARGE, f"frame declares {size} bytes, cap is {max_size}"
        )
    try:
        if size != zstandard.CONTENTSIZE_UNKNOWN:
            out = _decompressor().decompress(data, max_output_size=max(size, 1))
            if len(out) != size:
                raise DecodeError(Reason.BAD_COMPRESSION, "frame shorter than it declares")
            return out
        reader = _decompressor().stream_reader(data, read_across_frames=False)
        with reader:
            out = reader.read(max_size + 1)
            if len(out) > max_size:
                raise DecodeError(
                    Reason.DECOMPRESSED_TOO_LARGE, f"output exceeds the cap of {max_size} bytes"
                )
        return out
    except zstandard.ZstdError as exc:
        raise DecodeError(Reason.BAD_COMPRESSION, f"corrupt zstd data: {exc}") from None
