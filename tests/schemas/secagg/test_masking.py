"""Masking and unmasking: exact sums under every dropout pattern, refusals, confidentiality."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from schemas.secagg import (
    MemberSecrets,
    Problem,
    SecAggError,
    bits_needed,
    from_ring,
    neighbour_graph,
    noise_bound,
    quantize,
    self_mask,
    skellam_noise,
    to_ring,
    unmask,
)
from tests.support.secagg import SecureBucket

CLIP, SCALE, CAP = 1.0, 127.0, 8.0


def _members(n: int) -> list[str]:
    return [f"dev-{i:02d}" for i in range(n)]


def _quantised(members: list[str], length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data only: the secrets come from libsodium
    return {m: quantize(rng.normal(size=length), clip_norm=CLIP, scale=SCALE,
                        weight=float(rng.uniform(0, 10)), weight_cap=CAP) for m in members}


@st.composite
def _dropouts(draw: st.DrawFn, *, sparse: bool) -> tuple[list[str], int, int, set[str]]:
    n = draw(st.integers(3, 12))
    members = _members(n)
    degree = draw(st.integers(2, max(2, n - 2))) if sparse else n - 1
    threshold = draw(st.integers(2, n))
    survivors = set(draw(st.lists(st.sampled_from(members), unique=True,
                                  min_size=threshold if not sparse else 1)))
    return members, degree, threshold, survivors


@settings(max_examples=60, deadline=None)
@given(case=_dropouts(sparse=False), length=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_any_dropout_leaving_t_members_gives_the_exact_sum(
        case: tuple[list[str], int, int, set[str]], length: int, seed: int) -> None:
    members, degree, threshold, survivors = case
    bits = bits_needed(len(members), CLIP * SCALE, CAP)
    bucket = SecureBucket.set_up("b-1", members, degree=degree, share_threshold=threshold,
                                 bits=bits)
    inputs = _quantised(members, length, seed)
    ring = {m: to_ring(v, bits) for m, v in inputs.items()}
    total = bucket.aggregate(ring, survivors=survivors, threshold=threshold)
    assert np.array_equal(from_ring(total, bits), sum(inputs[m] for m in survivors))


@settings(max_examples=60, deadline=None)
@given(case=_dropouts(sparse=True), data=st.data())
def test_sparse_graphs_sum_exactly_or_refuse_whole(
        case: tuple[list[str], int, int, set[str]], data: st.DataObject) -> None:
    """SecAgg+: shares go to neighbours only, so a pattern is recoverable iff every needed
    secret has ``share_threshold`` surviving holders (and ``threshold`` members survive)."""
    members, degree, threshold, survivors = case
    share_threshold = data.draw(st.integers(1, degree + 1))
    bits = 20
    bucket = SecureBucket.set_up("b-2", members, degree=degree,
                                 share_threshold=share_threshold, bits=bits)
    inputs = _quantised(members, 8, data.draw(st.integers(0, 2**32)))
    ring = {m: to_ring(v, bits) for m, v in inputs.items()}
    event(f"recoverable: {bucket.recoverable(survivors, threshold)}")
    if bucket.recoverable(survivors, threshold):
        total = bucket.aggregate(ring, survivors=survivors, threshold=threshold)
        assert np.array_equal(from_ring(total, bits), sum(inputs[m] for m in survivors))
    else:
        with pytest.raises(SecAggError) as info:
            bucket.aggregate(ring, survivors=survivors, threshold=threshold)
        assert info.value.problem is Problem.BELOW_THRESHOLD


@pytest.fixture(scope="module")
def six() -> SecureBucket:
    return SecureBucket.set_up("b-6", _members(6), degree=2, share_threshold=2, bits=16)


def _unmask(bucket: SecureBucket, survivors: list[str], **overrides: object) -> np.ndarray:
    values = {m: bucket.masked(m, np.arange(10, dtype=np.uint32)) for m in survivors}
    dropped = [m for m in bucket.graph if m not in survivors]
    kwargs: dict[str, object] = {
        "bits": bucket.bits, "bucket": bucket.bucket, "graph": bucket.graph,
        "public_keys": bucket.public_keys,
        "self_seeds": {m: bucket.secrets[m].self_seed for m in survivors},
        "dropped_keys": {m: bucket.secrets[m].mask_keys.private for m in dropped},
        "threshold": 3, **overrides}
    return unmask(values, **kwargs)  # type: ignore[arg-type]


def test_unmask_with_every_secret_sums(six: SecureBucket) -> None:
    survivors = _members(6)[:4]
    assert _unmask(six, survivors).tolist() == [4 * i for i in range(10)]


def test_below_threshold_is_refused_with_no_partial_result(six: SecureBucket) -> None:
    with pytest.raises(SecAggError) as info:
        _unmask(six, _members(6)[:2])
    assert info.value.problem is Problem.BELOW_THRESHOLD


def test_a_survivors_mask_key_is_refused(six: SecureBucket) -> None:
    survivors = _members(6)[:4]
    leak = {m: six.secrets[m].mask_keys.private for m in _members(6)}
    with pytest.raises(SecAggError) as info:
        _unmask(six, survivors, dropped_keys=leak)
    assert info.value.problem is Problem.SHARE_CONFLICT


def test_missing_secrets_are_refused(six: SecureBucket) -> None:
    survivors = _members(6)[:5]
    with pytest.raises(SecAggError) as info:
        _unmask(six, survivors, self_seeds={m: six.secrets[m].self_seed for m in survivors[1:]})
    assert info.value.problem is Problem.MISSING_SECRET
    with pytest.raises(SecAggError) as info:
        _unmask(six, survivors, dropped_keys={})
    assert info.value.problem is Problem.MISSING_SECRET


def test_a_wrong_dropped_key_is_refused(six: SecureBucket) -> None:
    survivors = _members(6)[:5]
    wrong = {_members(6)[5]: MemberSecrets.generate().mask_keys.private}
    with pytest.raises(SecAggError) as info:
        _unmask(six, survivors, dropped_keys=wrong)
    assert info.value.problem is Problem.BAD_SHARE


def test_malformed_inputs_are_refused(six: SecureBucket) -> None:
    member = _members(6)[0]
    for bad in (np.arange(3, dtype=np.int64), np.full(3, 1 << 16, dtype=np.uint32),
                np.zeros((2, 2), dtype=np.uint32)):
        with pytest.raises(SecAggError):
            six.masked(member, bad)  # type: ignore[arg-type]
    values = {m: six.masked(m, np.zeros(n, dtype=np.uint32))
              for m, n in zip(_members(6)[:3], (3, 3, 4), strict=True)}
    with pytest.raises(SecAggError):
        unmask(values, bits=16, bucket="b-6", graph=six.graph, public_keys=six.public_keys,
               self_seeds={m: six.secrets[m].self_seed for m in values},
               dropped_keys={m: six.secrets[m].mask_keys.private for m in _members(6)[3:]},
               threshold=2)


def test_a_masked_input_is_uncorrelated_with_the_input() -> None:
    members = _members(5)
    bucket = SecureBucket.set_up("b-r", members, degree=2, share_threshold=2, bits=16)
    rng = np.random.default_rng(7)
    update = quantize(rng.normal(size=100_000) * np.linspace(0, 3, 100_000), clip_norm=100.0,
                      scale=100.0, weight_cap=1.0)
    x = to_ring(update, 16)
    y = bucket.masked(members[0], x)
    for plain in (update, x):
        r = np.corrcoef(plain.astype(np.float64), y.astype(np.float64))[0, 1]
        assert abs(r) < 0.05
    assert np.corrcoef(update, from_ring(x, 16))[0, 1] > 0.999  # the test can see a signal


def test_pair_masks_of_survivors_cancel_in_the_sum() -> None:
    members = _members(4)
    graph = neighbour_graph("b-c", members, 3)
    assert all(len(v) == 3 for v in graph.values())
    bucket = SecureBucket.set_up("b-c", members, degree=3, share_threshold=2, bits=12)
    zero = np.zeros(16, dtype=np.uint32)
    masked = np.sum([bucket.masked(m, zero).astype(np.int64) for m in members], axis=0)
    selfs = np.sum([self_mask(bucket.secrets[m].self_seed, 16, 12, bucket="b-c")
                    .astype(np.int64)
                    for m in members], axis=0)
    assert bucket.masked(members[0], zero).any()
    assert ((masked - selfs) % (1 << 12)).tolist() == [0] * 16


def test_noised_inputs_sum_exactly_within_the_width_bits_needed_chose() -> None:
    members, t, variance = _members(6), 4, 400.0
    bits = bits_needed(len(members), CLIP * SCALE, CAP, noise_bound(variance, t))
    bucket = SecureBucket.set_up("b-n", members, degree=3, share_threshold=3, bits=bits)
    inputs = {m: q + skellam_noise(q.size, central_variance=variance, min_members=t)
              for m, q in _quantised(members, 64, 11).items()}
    survivors = set(members[:5])
    total = bucket.aggregate({m: to_ring(v, bits) for m, v in inputs.items()},
                             survivors=survivors, threshold=t)
    assert np.array_equal(from_ring(total, bits), np.sum([inputs[m] for m in survivors], axis=0))


def test_masking_a_million_coordinates_is_fast() -> None:
    bucket = SecureBucket.set_up("b-m", _members(6), degree=4, share_threshold=3)
    start = time.perf_counter()
    masked = bucket.masked(_members(6)[0], np.zeros(1_000_000, dtype=np.uint32))
    assert time.perf_counter() - start < 1.0  # five 4 MB keystreams: ≈ 0.04 s here
    assert masked.size == 1_000_000 and int(masked.max()) < 1 << 16
