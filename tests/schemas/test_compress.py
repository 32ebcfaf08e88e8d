"""zstd with caps: exact at the cap, streamed frames bounded, bad frames are bad compression."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DecodeError, Reason, compress, decompress


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000) | st.binary(max_size=20).map(lambda b: b * 300),
       st.integers(1, 9))
def test_compress_round_trips_and_the_cap_is_exact(data: bytes, level: int) -> None:
    frame = compress(data, level)
    assert decompress(frame, len(data)) == data
    if data:
        with pytest.raises(DecodeError) as info:
            decompress(frame, len(data) - 1)
        assert info.value.reason is Reason.DECOMPRESSED_TOO_LARGE


def test_streamed_frames_are_decompressed_up_to_the_cap() -> None:
    data = b"fedmq " * 10_000
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert decompress(frame, len(data)) == data
    with pytest.raises(DecodeError) as info:
        decompress(frame, len(data) - 1)
    assert info.value.reason is Reason.DECOMPRESSED_TOO_LARGE


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x28\xb5\x2f", b"PK\x03\x04 not zstd", b"\x28\xb5\x2f\xfd", compress(b"x" * 100)[:-4],
     compress(b"abc")[:6] + b"\xff" * 8],
    ids=["empty", "short-magic", "other-format", "magic-only", "truncated", "garbage-blocks"],
)
def test_bad_frames_are_bad_compression(frame: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decompress(frame, 1 << 20)
    assert info.value.reason is Reason.BAD_COMPRESSION
