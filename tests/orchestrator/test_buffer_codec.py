"""The buffer form of accepted deltas: int8 kept as sent, restored bit-identically."""

from __future__ import annotations

import numpy as np

from orchestrator.aggregation import decode_params as store_decode
from orchestrator.aggregation import encode_params as store_encode
from orchestrator.buffer_codec import from_stored, to_stored
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


def test_other_codecs_are_kept_as_float32() -> None:
    for codec in (Codec.FLOAT32, Codec.FLOAT16, Codec.TOPK):
        update, decoded = _update(CodecSpec(codec, topk_fraction=0.2))
        stored, form = to_stored(update, decoded)
        assert form == "float32" and stored is decoded
        restored = from_stored(store_decode(store_encode(stored)))
        assert all(restored[n].tobytes() == v.tobytes() for n, v in decoded.items())
