"""The storage encoding of parameters: bit-exact round trips and typed refusal of bad blobs."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.store import ParamsCodecError, decode_params, encode_params

_shapes = st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=4)


@st.composite
def _tensor(draw: st.DrawFn) -> np.ndarray:
    shape = tuple(draw(_shapes))
    count = int(np.prod(shape, dtype=np.int64))
    # arbitrary 32-bit patterns: every NaN payload, infinities, -0.0, subnormals
    bits = draw(st.lists(st.integers(0, 2**32 - 1), min_size=count, max_size=count))
    return np.array(bits, dtype=np.uint32).view(np.float32).reshape(shape)


_params = st.dictionaries(st.text(max_size=12), _tensor(), max_size=6)


@settings(max_examples=150, deadline=None)
@given(_params)
def test_round_trip_is_bit_exact(params: dict[str, np.ndarray]) -> None:
    out = decode_params(encode_params(params))
    assert list(out) == list(params)
    for name, arr in params.items():
        got = out[name]
        assert got.dtype == np.float32 and got.shape == arr.shape
        assert got.view(np.uint32).tobytes() == arr.view(np.uint32).tobytes()
        assert got.flags.writeable and got.flags.c_contiguous


def test_layouts_and_dtypes_survive() -> None:
    params = {
        "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
        "big_endian": np.arange(4, dtype=">f4"),
        "scalar": np.array(np.float32(7.5)),
        "counter": np.array(3, dtype=np.int64),
        "half": np.array([1.5, -2.0], dtype=np.float16),
    }
    out = decode_params(encode_params(params))
    for name, arr in params.items():
        assert out[name].shape == arr.shape
        np.testing.assert_array_equal(out[name], arr)
    assert out["big_endian"].dtype == np.dtype("<f4")
    assert out["counter"].dtype == np.int64 and out["half"].dtype == np.float16


def test_outputs_do_not_alias_each_other() -> None:
    out = decode_params(encode_params({"a": np.zeros(3, np.float32),
                                       "b": np.zeros(3, np.float32)}))
    out["a"][:] = 1.0
    assert out["b"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("value", [[1.0, 2.0], np.array(["x"]), np.array([1 + 2j])])
def test_unencodable_values_are_refused(value: object) -> None:
    with pytest.raises(ParamsCodecError):
        encode_params({"x": value})  # type: ignore[dict-item]


def _blob_with_header(header: object, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return (struct.pack("<4sB3xI", b"FMQP", 1, len(head)) + head
            + zstandard.ZstdCompressor().compress(payload))


@pytest.mark.parametrize("blob", [
    b"",
    b"FMQP",
    b"XXXX" + bytes(8),
    struct.pack("<4sB3xI", b"FMQP", 9, 0),  # unknown format version
    struct.pack("<4sB3xI", b"FMQP", 1, 10_000) + b"[]",  # header longer than the blob
    struct.pack("<4sB3xI", b"FMQP", 1, 3) + b"{{{",
    _blob_with_header({"not": "a list"}),
    _blob_with_header([["a", "<f4"]]),
    _blob_with_header([["a", "<f4", [2]], ["a", "<f4", [2]]], bytes(16)),  # duplicate name
    _blob_with_header([["a", "|O", [1]]], bytes(8)),
    _blob_with_header([["a", "<f4", [-1]]]),
    _blob_with_header([["a", "<f4", [True]]], bytes(8)),
    _blob_with_header([["a", "<f4", [2]]], bytes(4)),  # payload shorter than declared
    _blob_with_header([["a", "<f4", [1]]], bytes(16)),  # payload longer than declared
    _blob_with_header([["a", "<f4", [2**40, 2**20]]]),  # would allocate petabytes
])
def test_bad_blobs_raise_typed_errors(blob: bytes) -> None:
    with pytest.raises(ParamsCodecError):
        decode_params(blob)


def test_corrupted_payload_and_size_limit() -> None:
    blob = bytearray(encode_params({"w": np.arange(1000, dtype=np.float32)}))
    with pytest.raises(ParamsCodecError):
        decode_params(bytes(blob[:-5]))
    blob[-10] ^= 0xFF
    with pytest.raises(ParamsCodecError):
        decode_params(bytes(blob))
    with pytest.raises(ParamsCodecError, match="exceed"):
        decode_params(encode_params({"w": np.zeros(1000, np.float32)}), max_bytes=1000)
