"""Quantisation: clipping, unbiased cryptographic rounding, the bit width that cannot wrap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.secagg import (
    Problem,
    SecAggError,
    bits_needed,
    clip_l2,
    dequantize,
    from_ring,
    member_bound,
    quantize,
    stochastic_round,
    to_ring,
)


def test_sixteen_bits_for_32_int8_inputs_weighted_up_to_8() -> None:
    assert bits_needed(32, 127, 8) == 16
    assert bits_needed(32, 128, 8) == 17  # 32·1024 = 2^15 does not fit a signed 16-bit sum
    assert bits_needed(1, 0, 1) == 1
    assert bits_needed(10, 100, 1, noise_bound=50) == bits_needed(10, 150, 1)


def test_too_wide_sums_are_refused() -> None:
    with pytest.raises(SecAggError) as info:
        bits_needed(1 << 20, 1 << 12, 1)
    assert info.value.problem is Problem.BAD_PARAMETER


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 64), bound=st.floats(0, 500), cap=st.floats(0.01, 16),
       noise=st.integers(0, 300), data=st.data())
def test_worst_case_sums_decode_without_wrapping(n: int, bound: float, cap: float, noise: int,
                                                 data: st.DataObject) -> None:
    bits = bits_needed(n, bound, cap, noise)
    m = member_bound(bound, cap, noise)
    signs = np.array(data.draw(st.lists(st.sampled_from([-1, 1]), min_size=n, max_size=n)))
    for extreme in (m * signs, np.full(n, m), np.full(n, -m)):
        total = to_ring(extreme.astype(np.int64), bits).astype(np.uint64).sum() % (1 << bits)
        assert from_ring(np.array([total], dtype=np.uint32), bits)[0] == extreme.sum()
    assert bits == 1 or n * m > (1 << (bits - 2)) - 1  # and the width is the least one


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=50), clip=st.floats(0.1, 10))
def test_clipping_bounds_the_norm_and_keeps_short_deltas(values: list[float],
                                                         clip: float) -> None:
    clipped = clip_l2(values, clip)
    assert np.linalg.norm(clipped) <= clip * (1 + 1e-12)
    if np.linalg.norm(values) <= clip:
        assert np.array_equal(clipped, np.asarray(values))


def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    values = np.full(200_000, 0.3) + np.arange(200_000) % 5
    seed = bytes(range(32))
    rounded = stochastic_round(values, seed)
    assert set(np.unique(rounded - np.floor(values)).tolist()) == {0, 1}
    assert abs(float((rounded - values).mean())) < 0.005
    assert np.array_equal(rounded, stochastic_round(values, seed))
    assert not np.array_equal(stochastic_round(values), stochastic_round(values))  # fresh seeds


def test_integers_round_to_themselves() -> None:
    values = np.arange(-5, 6, dtype=np.float64)
    assert np.array_equal(stochastic_round(values), values.astype(np.int64))


def test_quantize_clips_weights_and_stays_within_the_member_bound() -> None:
    delta = np.linspace(-3, 3, 101)
    q = quantize(delta, clip_norm=1.0, scale=127, weight=20, weight_cap=8, seed=bytes(32))
    assert np.abs(q).max() <= member_bound(127, 8)
    expected = clip_l2(delta, 1.0) * 127 * 8
    assert np.abs(q - expected).max() < 1
    assert np.allclose(dequantize(to_ring(q, 17), 17, 127), q / 127)


def test_ring_round_trip() -> None:
    values = np.array([-(1 << 15), -1, 0, 1, (1 << 15) - 1], dtype=np.int64)
    ring = to_ring(values, 16)
    assert ring.dtype == np.uint32 and ring.tolist() == [1 << 15, 65535, 0, 1, 32767]
    assert np.array_equal(from_ring(ring, 16), values)
    assert np.array_equal(from_ring(to_ring(values, 32), 32), values)


@pytest.mark.parametrize(("clip", "scale", "weight", "cap"), [
    (0.0, 1.0, 1.0, 1.0), (1.0, 0.0, 1.0, 1.0), (1.0, 1.0, -1.0, 1.0), (1.0, 1.0, 1.0, 0.0),
    (float("nan"), 1.0, 1.0, 1.0)])
def test_bad_parameters_are_refused(clip: float, scale: float, weight: float,
                                    cap: float) -> None:
    with pytest.raises(SecAggError):
        quantize([1.0, 2.0], clip_norm=clip, scale=scale, weight=weight, weight_cap=cap)


def test_non_finite_deltas_are_refused() -> None:
    with pytest.raises(SecAggError):
        quantize([1.0, float("inf")], clip_norm=1.0, scale=1.0)
