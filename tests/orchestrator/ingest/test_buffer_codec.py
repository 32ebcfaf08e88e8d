"""The buffer form of accepted deltas: int8 and top-k kept as sent, restored bit-identically;
an update whose int8 blob an earlier release wrote still restores."""

from __future__ import annotations

import numpy as np

from orchestrator.aggregation import decode_params as store_decode
from orchestrator.aggregation import encode_params as store_encode
from orchestrator.ingest.buffer_codec import (
    decode_buffered,
    encode_buffered,
    from_stored,
    to_stored,
)
from schemas import Codec, CodecSpec, Update, decode_params, encode_params


def _update(spec: CodecSpec) -> tuple[Update, dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    delta = {"W": rng.standard_normal((30, 7)).astype(np.float32),
             "b": rng.standard_normal(7).astype(np.float32)}
    tensors = encode_params(delta, spec, rng)
    return Update("t", 0, 5, tensors, codec=spec.codec), decode_params(tensors)


def test_int8_is_kept_compact_and_restored_bit_exactly() -> None:
    for chunk in (0, 16):
        update, decoded = _update(CodecSpec(Codec.INT8, chunk=chunk))
        stored, form = to_stored(update, decoded)
        assert form == "int8" and stored["W"].dtype == np.int8
        # through the store's own blob codec, as the buffer keeps it
        restored = from_stored(store_decode(store_encode(stored)))
        assert list(restored) == ["W", "b"]
        for name, value in decoded.items():
            assert restored[name].dtype == np.float32
            assert restored[name].tobytes() == value.tobytes()


def test_topk_is_kept_sparse_and_restored_bit_exactly() -> None:
    update, decoded = _update(CodecSpec(Codec.TOPK, topk_fraction=0.1))
    stored, form = to_stored(update, decoded)
    assert form == "topk"
    kept = sum(int(v.nbytes) for v in stored.values())
    assert kept < sum(int(v.nbytes) for v in decoded.values()) / 4  # 10 % of the values
    restored = from_stored(store_decode(store_encode(stored)))
    assert list(restored) == ["W", "b"]
    for name, value in decoded.items():
        assert restored[name].shape == value.shape
        assert restored[name].tobytes() == value.tobytes()
    blob, form = encode_buffered(update, decoded)
    assert form == "topk"
    assert all(decode_buffered(blob)[n].tobytes() == v.tobytes() for n, v in decoded.items())


def test_mixed_int8_and_topk_tensors_are_each_kept_as_sent() -> None:
    rng = np.random.default_rng(5)
    delta = {"W": rng.standard_normal((30, 7)).astype(np.float32),
             "b": rng.standard_normal(7).astype(np.float32)}
    tensors = (encode_params({"W": delta["W"]}, CodecSpec(Codec.TOPK, topk_fraction=0.2), rng)
               + encode_params({"b": delta["b"]}, CodecSpec(Codec.INT8), rng))
    update = Update("t", 0, 5, tensors, codec=Codec.TOPK)
    decoded = decode_params(tensors)
    stored, form = to_stored(update, decoded)
    assert form == "int8+topk"
    restored = from_stored(store_decode(store_encode(stored)))
    assert all(restored[n].tobytes() == v.tobytes() for n, v in decoded.items())


def test_other_codecs_are_kept_as_float32() -> None:
    for codec in (Codec.FLOAT32, Codec.FLOAT16):
        update, decoded = _update(CodecSpec(codec))
        stored, form = to_stored(update, decoded)
        assert form == "float32" and stored is decoded
        restored = from_stored(store_decode(store_encode(stored)))
        assert all(restored[n].tobytes() == v.tobytes() for n, v in decoded.items())
