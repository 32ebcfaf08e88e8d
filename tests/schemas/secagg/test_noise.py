"""Skellam noise: bounded, seeded from the keystream, and t members sum to the target variance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from schemas.secagg import (
    SecAggError,
    member_variance,
    noise_bound,
    poisson_table,
    skellam_noise,
)


@pytest.mark.parametrize("target", [4.0, 300.0, 40_000.0])
def test_t_members_sum_to_the_target_variance(target: float) -> None:
    t = 4
    total = np.sum([skellam_noise(50_000, central_variance=target, min_members=t)
                    for _ in range(t)], axis=0)
    assert abs(float(total.var()) / target - 1) < 0.05  # sd of the ratio ≈ 0.0063
    assert abs(float(total.mean())) < 5 * math.sqrt(target / 50_000)


def test_bounded_and_deterministic_per_seed() -> None:
    seed = bytes(range(32))
    one = skellam_noise(100_000, central_variance=80.0, min_members=2, seed=seed)
    assert np.array_equal(one, skellam_noise(100_000, central_variance=80.0, min_members=2,
                                             seed=seed))
    assert one.dtype == np.int64
    assert int(np.abs(one).max()) <= noise_bound(80.0, 2)
    assert not np.array_equal(one, skellam_noise(100_000, central_variance=80.0, min_members=2))


def test_poisson_table_matches_the_pmf() -> None:
    low, cdf = poisson_table(3.0)
    assert low == 0 and cdf[-1] == 1.0
    pmf = np.diff(cdf, prepend=0.0)
    expected = [math.exp(-3.0) * 3.0**k / math.factorial(k) for k in range(6)]
    assert np.allclose(pmf[:6], expected, rtol=1e-12)


def test_zero_variance_adds_nothing() -> None:
    assert not skellam_noise(10, central_variance=0.0, min_members=3).any()
    assert noise_bound(0.0, 3) == 0


def test_member_variance_and_refusals() -> None:
    assert member_variance(90.0, 9) == 10.0
    for variance, t in ((-1.0, 2), (float("nan"), 2), (1.0, 0), (1e12, 1)):
        with pytest.raises(SecAggError):
            noise_bound(variance, t)
