"""The version annex: pooled feature statistics, standardisation, score histograms and the
quantile estimate the anomaly threshold is made from."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.annex import (
    SCORE_BINS,
    SCORE_EDGES,
    FeatureStats,
    ModelAnnex,
    annex_from_record,
    annex_to_record,
    histogram_quantile,
    pool_stats,
    score_histogram,
    standardize,
)
from schemas.errors import ValidationError


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_pooled_statistics_equal_those_of_the_pooled_data(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.normal(rng.uniform(-50, 50), rng.uniform(0.1, 9), (n, 3)) for n in sizes]
    mean, scale = pool_stats([FeatureStats.of(p) for p in parts])
    everything = np.concatenate(parts)
    assert np.allclose(mean, everything.mean(axis=0), rtol=1e-9, atol=1e-9)
    assert np.allclose(1 / np.asarray(scale), np.maximum(everything.std(axis=0), 1e-6),
                       rtol=1e-7)


def test_pooling_refuses_mixed_feature_counts() -> None:
    with pytest.raises(ValueError, match="different numbers of features"):
        pool_stats([FeatureStats.of(np.ones((2, 3))), FeatureStats.of(np.ones((2, 4)))])
    with pytest.raises(ValueError):
        pool_stats([])


def test_standardize_applies_mean_and_scale_and_checks_the_width() -> None:
    annex = ModelAnnex([1.0, -2.0], [0.5, 2.0])
    x = np.array([[3.0, 0.0]], dtype=np.float32)
    assert standardize(x, annex).tolist() == [[1.0, 4.0]]
    assert standardize(x, ModelAnnex()) is x
    with pytest.raises(ValueError, match="3 features"):
        standardize(np.zeros((1, 3), np.float32), annex)


@pytest.mark.parametrize("bad", [
    {"feature_mean": [1.0], "feature_scale": []},
    {"feature_mean": [1.0], "feature_scale": [0.0]},
    {"feature_mean": [float("nan")], "feature_scale": [1.0]},
    {"anomaly_threshold": -1.0},
    {"anomaly_threshold": float("inf")},
])
def test_an_annex_that_cannot_be_used_is_refused(bad: dict[str, object]) -> None:
    record = annex_to_record(ModelAnnex()) | bad
    with pytest.raises(ValidationError):
        annex_from_record(record)


def test_annex_records_round_trip() -> None:
    annex = ModelAnnex([1.0, 2.0], [3.0, 4.0], 0.5, 7, False)
    assert annex_from_record(annex_to_record(annex)) == annex
    with pytest.raises(ValidationError):
        annex_from_record([1, 2])


def test_histogram_counts_every_score_once_including_the_outer_bins() -> None:
    scores = np.array([0.0, SCORE_EDGES[0] / 2, 1.0, SCORE_EDGES[-1] * 2, np.nan, np.inf])
    counts = score_histogram(scores)
    assert counts.shape == (SCORE_BINS,) and counts.sum() == len(scores)
    assert counts[0] == 2 and counts[-1] == 3  # NaN and inf count as the worst scores


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), q=st.sampled_from([0.9, 0.95, 0.99]),
       sigma=st.floats(0.2, 2.0))
def test_the_quantile_of_a_histogram_is_near_the_true_one(seed: int, q: float,
                                                          sigma: float) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(0.0, sigma, 20_000)
    estimate, total = histogram_quantile(score_histogram(scores), q)
    assert total == len(scores)
    true = float(np.quantile(scores, q))
    assert true / 1.2 < estimate < true * 1.2  # bins are 33 % wide; interpolation helps


def test_noisy_histograms_from_many_devices_still_give_the_quantile() -> None:
    rng = np.random.default_rng(3)
    summed, n = np.zeros(SCORE_BINS), 0
    for _ in range(20):  # 20 devices, 200 samples each, noise std 1 on every count
        scores = rng.lognormal(0.0, 0.5, 200)
        summed += score_histogram(scores) + rng.normal(0.0, 1.0, SCORE_BINS)
        n += 200
    estimate, _ = histogram_quantile(summed, 0.99, total=n)
    true = float(np.exp(0.5 * 2.326))  # lognormal(0, 0.5)'s 99th percentile
    assert true / 1.35 < estimate < true * 1.35
    # clipping each noisy count at zero first would have put it far higher
    biased, _ = histogram_quantile(np.maximum(summed, 0.0), 0.99)
    assert biased > estimate


def test_quantile_refuses_what_it_cannot_estimate() -> None:
    with pytest.raises(ValueError):
        histogram_quantile([1.0] * SCORE_BINS, 1.0)
    with pytest.raises(ValueError):
        histogram_quantile([1.0] * 3, 0.5)
    with pytest.raises(ValueError):
        histogram_quantile([0.0] * SCORE_BINS, 0.5)
