"""Tensor codecs round-trip within their bounds; int8 rounding is unbiased; error feedback keeps
what the codec drops; XOR model deltas are bit-exact; the parameter digest sees every bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from nacl.signing import SigningKey

from schemas import (
    Codec,
    CodecSpec,
    EncodedTensor,
    ErrorFeedback,
    ModelDelta,
    apply_xor_delta,
    decode,
    decode_params,
    decode_tensor,
    encode_params,
    encode_tensor,
    pack,
    params_digest,
    xor_delta,
)

TINY = float(np.finfo(np.float32).tiny)
SUBNORMAL = float(np.finfo(np.float32).smallest_subnormal)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


def arrays(max_abs: float = 2.0**100, shapes: st.SearchStrategy[tuple[int, ...]] = SHAPES,
           ) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, shapes, elements=st.floats(
        -max_abs, max_abs, width=32, allow_nan=False, allow_infinity=False))


def bit_patterns() -> st.SearchStrategy[np.ndarray]:
    """Every float32 there is, NaN payloads, infinities, -0.0 and subnormals included."""
    return hnp.arrays(np.uint32, SHAPES).map(lambda a: a.view(np.float32))


def _round_trip(x: np.ndarray, spec: CodecSpec, seed: int = 0) -> tuple[EncodedTensor, np.ndarray]:
    encoded = encode_tensor("w", x, spec, np.random.default_rng(seed))
    decoded = decode_tensor(encoded)
    assert decoded.shape == x.shape and decoded.dtype == np.float32
    return encoded, decoded


@settings(max_examples=60, deadline=None)
@given(bit_patterns())
def test_float32_is_bit_exact(x: np.ndarray) -> None:
    _, y = _round_trip(x, CodecSpec(Codec.FLOAT32))
    assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


@settings(max_examples=60, deadline=None)
@given(arrays(max_abs=65504.0))
def test_float16_is_within_half_precision(x: np.ndarray) -> None:
    _, y = _round_trip(x, CodecSpec(Codec.FLOAT16))
    # round to nearest: relative 2^-11 for normal halves, half a subnormal step below them
    bound = np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)
    assert np.all(np.abs(y.astype(np.float64) - x) <= bound)


def _expected_scales(x: np.ndarray, chunk: int) -> np.ndarray:
    flat = np.abs(x.reshape(-1).astype(np.float64))
    n = flat.size
    size = min(chunk, max(n, 1)) if chunk else max(n, 1)
    blocks = [flat[i:i + size] for i in range(0, max(n, 1), size)]
    peaks = np.array([b.max() if b.size else 0.0 for b in blocks])
    return np.where(peaks > 0, np.maximum(peaks / 127, TINY), 1.0)


@settings(max_examples=80, deadline=None)
@given(x=arrays(max_abs=2.0**120), chunk=st.sampled_from([0, 1, 3, 4, 16, 1000]),
       seed=st.integers(0, 2**32))
def test_int8_is_within_one_step_of_its_scale(x: np.ndarray, chunk: int, seed: int) -> None:
    encoded, y = _round_trip(x, CodecSpec(Codec.INT8, chunk=chunk), seed)
    scales = np.frombuffer(encoded.scales, dtype="<f4").astype(np.float64)
    np.testing.assert_allclose(scales, _expected_scales(x, chunk), rtol=1e-6)
    assert len(encoded.data) == x.size and encoded.chunk == chunk
    per_element = np.repeat(scales, min(chunk, x.size) if chunk else max(x.size, 1))[:x.size]
    error = np.abs(y.reshape(-1).astype(np.float64) - x.reshape(-1))
    assert np.all(error <= per_element * (1 + 1e-5) + SUBNORMAL)


@settings(max_examples=80, deadline=None)
@given(x=arrays(max_abs=2.0**120), fraction=st.floats(1e-3, 1.0), seed=st.integers(0, 2**32))
def test_topk_keeps_the_largest_within_one_step(x: np.ndarray, fraction: float,
                                                seed: int) -> None:
    encoded, y = _round_trip(x, CodecSpec(Codec.TOPK, topk_fraction=fraction), seed)
    flat, out = np.abs(x.reshape(-1)), y.reshape(-1)
    idx = np.frombuffer(encoded.indices, dtype="<u4").astype(np.int64)
    k = max(1, math.ceil(flat.size * fraction)) if flat.size else 0
    assert idx.size == min(k, flat.size)
    assert np.all(np.diff(idx) > 0)
    dropped = np.setdiff1d(np.arange(flat.size), idx)
    if idx.size and dropped.size:
        assert flat[idx].min() >= flat[dropped].max()  # ties may go either way
    assert np.all(out[dropped] == 0)
    scale = float(np.frombuffer(encoded.scales, dtype="<f4")[0])
    error = np.abs(out[idx].astype(np.float64) - x.reshape(-1)[idx])
    assert np.all(error <= scale * (1 + 1e-5) + SUBNORMAL)


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (0, 0), (), (7,), (2, 3)])
def test_zeros_and_empty_tensors_round_trip_exactly(codec: Codec, shape: tuple[int, ...]) -> None:
    x = np.zeros(shape, dtype=np.float32)
    for spec in (CodecSpec(codec), CodecSpec(codec, chunk=4)):
        _, y = _round_trip(x, spec)
        assert np.array_equal(y, x)


def test_int8_subnormal_deltas_encode_without_division_by_zero() -> None:
    x = np.array([SUBNORMAL, -3 * SUBNORMAL, 0.0, 1e-40], dtype=np.float32)
    _, y = _round_trip(x, CodecSpec(Codec.INT8))
    assert np.all(np.abs(y - x) <= TINY)


def test_int8_stochastic_rounding_is_unbiased() -> None:
    # Every value sits 0.3 of a step above a grid point (step 0.01): round-to-nearest would
    # be off by 0.003 on average; stochastic rounding must average out to the value.
    x = np.concatenate([[1.27], np.arange(-60, 60) * 0.01 + 0.003]).astype(np.float32)
    rng = np.random.default_rng(7)
    draws = 4000
    total = np.zeros_like(x, dtype=np.float64)
    for _ in range(draws):
        total += decode_tensor(encode_tensor("w", x, CodecSpec(Codec.INT8), rng))
    bias = np.abs(total / draws - x)
    # each draw is off by < one step (0.01); the mean's std is <= 0.005/sqrt(draws) = 8e-5
    assert bias.max() < 6 * 0.005 / math.sqrt(draws) < 0.003
    nearest = np.round(x / np.float32(0.01)) * np.float32(0.01)
    assert np.abs(nearest - x)[1:].mean() > 0.0029  # the bias the test would catch


@pytest.mark.parametrize(
    ("spec", "residual_bound"),
    [(CodecSpec(Codec.TOPK, topk_fraction=0.05), 15.0), (CodecSpec(Codec.INT8, chunk=8), 0.1)],
    ids=["topk5%", "int8-chunk8"],
)
def test_error_feedback_tracks_the_sum_of_true_deltas(spec: CodecSpec,
                                                      residual_bound: float) -> None:
    rng = np.random.default_rng(3)
    shapes = {"w": (10, 8), "b": (8,)}
    feedback = ErrorFeedback()
    true_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    sent_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    naive_sum = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    worst_residual = 0.0
    for _ in range(300):
        delta = {k: rng.normal(0.1, 1.0, s).astype(np.float32) for k, s in shapes.items()}
        sent = decode_params(feedback.encode(delta, spec, rng))
        naive = decode_params(encode_params(delta, spec, rng))
        for k in shapes:
            true_sum[k] += delta[k]
            sent_sum[k] += sent[k]
            naive_sum[k] += naive[k]
        worst_residual = max(worst_residual,
                             max(float(np.abs(r).max()) for r in feedback.residual.values()))
    for k in shapes:
        # telescoping: what was sent plus what is still held is exactly what was produced
        np.testing.assert_allclose(sent_sum[k] + feedback.residual[k], true_sum[k], atol=1e-3)
    tracked = max(float(np.abs(sent_sum[k] - true_sum[k]).max()) for k in shapes)
    naive_err = max(float(np.abs(naive_sum[k] - true_sum[k]).max()) for k in shapes)
    assert tracked == pytest.approx(max(float(np.abs(r).max())
                                        for r in feedback.residual.values()), rel=1e-3)
    # bounded (it does not grow with the rounds) while the error without feedback does grow
    assert worst_residual < residual_bound
    assert tracked < naive_err / 4


def test_error_feedback_ignores_a_residual_of_another_shape() -> None:
    feedback = ErrorFeedback({"w": np.ones(3, np.float32)})
    out = feedback.compensate({"w": np.zeros((2, 2), np.float32)})
    assert np.array_equal(out["w"], np.zeros((2, 2)))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_xor_delta_is_bit_exact_for_every_pattern(data: st.DataObject) -> None:
    old_a, old_b = data.draw(bit_patterns()), data.draw(bit_patterns())
    new_a = data.draw(hnp.arrays(np.uint32, old_a.shape)).view(np.float32)
    new_b = data.draw(hnp.arrays(np.uint32, old_b.shape)).view(np.float32)
    old, new = {"a": old_a, "b": old_b}, {"a": new_a, "b": new_b}
    delta = xor_delta(old, new)
    # what travels: float32-coded XOR tensors (whose bits are often NaN patterns)
    sent = decode_params(encode_params(delta, CodecSpec(Codec.FLOAT32), np.random.default_rng()))
    rebuilt = apply_xor_delta(old, sent)
    for k in new:
        assert np.array_equal(rebuilt[k].view(np.uint32), new[k].view(np.uint32))
    assert params_digest(rebuilt) == params_digest(new)


def test_xor_delta_through_a_signed_model_delta_message() -> None:
    key = SigningKey(b"\x05" * 32)
    special = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, 3.0], np.float32)
    payload = special.view(np.uint32).copy()
    payload[0] = 0x7FA00001  # a signalling NaN with a payload
    old = {"w": payload.view(np.float32), "b": np.float32([1.5, -2.0])}
    new = {"w": np.float32([-0.0, np.nan, 1.0, 2.0, np.inf, 0.0, 3.0]), "b": np.float32([1, 2])}
    xor = encode_params(xor_delta(old, new), CodecSpec(Codec.FLOAT32), np.random.default_rng())
    message = ModelDelta(2, 1, xor, params_digest(new))
    _, back = decode(pack(message, key=key, fed="f", sender="orchestrator", seq=1, ts_ms=1),
                     key.verify_key, ModelDelta)
    rebuilt = apply_xor_delta(old, decode_params(back.xor, path="$.xor"))
    assert params_digest(rebuilt) == back.params_sha256
    assert rebuilt["w"].view(np.uint32).tolist() == new["w"].view(np.uint32).tolist()


def test_xor_delta_refuses_mismatched_tensors() -> None:
    a = {"w": np.zeros(2, np.float32)}
    with pytest.raises(ValueError):
        xor_delta(a, {"v": np.zeros(2, np.float32)})
    with pytest.raises(ValueError):
        xor_delta(a, {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError):
        apply_xor_delta(a, {"w": np.zeros((2, 1), np.float32)})
    with pytest.raises(ValueError):
        apply_xor_delta(a, {})


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_params_digest_changes_with_any_bit(data: st.DataObject) -> None:
    x = data.draw(hnp.arrays(np.uint32, hnp.array_shapes(min_dims=1, max_side=5)))
    params = {"w": x.view(np.float32), "b": np.float32([0.5])}
    i = data.draw(st.integers(0, x.size - 1))
    bit = data.draw(st.integers(0, 31))
    flipped = x.copy().reshape(-1)
    flipped[i] ^= np.uint32(1 << bit)
    changed = {"w": flipped.reshape(x.shape).view(np.float32), "b": params["b"]}
    assert params_digest(changed) != params_digest(params)
    assert params_digest({"w": x.copy().view(np.float32), "b": np.float32([0.5])}) == \
        params_digest(params)


def test_params_digest_sees_names_shapes_and_order() -> None:
    w = np.arange(6, dtype=np.float32)
    base = params_digest({"w": w, "b": np.float32([1])})
    assert params_digest({"v": w, "b": np.float32([1])}) != base
    assert params_digest({"w": w.reshape(2, 3), "b": np.float32([1])}) != base
    assert params_digest({"b": np.float32([1]), "w": w}) != base
    assert params_digest({"w": w.astype(np.float64), "b": np.float32([1])}) == base
