"""Server-side Gaussian noise: the right scale for a mean of clipped contributions."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.privacy import PrivacyError, add_server_noise, server_noise_std


def test_noise_std_is_z_c_over_n_on_a_large_sample() -> None:
    mean = {"W": np.full((400, 250), 0.25, np.float32), "b": np.zeros(1000, np.float32)}
    z, c, n = 1.2, 0.5, 8
    noisy = add_server_noise(mean, clip_norm=c, noise_multiplier=z, n_participants=n,
                             rng=np.random.default_rng(7))
    noise = np.concatenate([(noisy["W"] - mean["W"]).ravel(), noisy["b"].ravel()])
    assert noise.size == 101_000
    expected = z * c / n
    # sample std of 1e5 normals is within ~0.5 % of sigma (5 standard errors is ~1.1 %)
    assert noise.std() == pytest.approx(expected, rel=0.015)
    assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)
    # Gaussian, not just the right spread: ~68.3 % within one sigma
    assert np.mean(np.abs(noise) < expected) == pytest.approx(0.6827, abs=0.01)
    assert noisy["W"].dtype == np.float32 and noisy["W"].shape == (400, 250)


def test_input_untouched_and_seeded_rng_reproducible() -> None:
    mean = {"w": np.arange(6, dtype=np.float32)}
    before = mean["w"].copy()
    a = add_server_noise(mean, clip_norm=1.0, noise_multiplier=1.0, n_participants=3,
                         rng=np.random.default_rng(1))
    b = add_server_noise(mean, clip_norm=1.0, noise_multiplier=1.0, n_participants=3,
                         rng=np.random.default_rng(1))
    np.testing.assert_array_equal(mean["w"], before)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], before)


def test_zero_noise_returns_copies() -> None:
    mean = {"w": np.ones(3, np.float32)}
    out = add_server_noise(mean, clip_norm=1.0, noise_multiplier=0.0, n_participants=2,
                           rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out["w"], mean["w"])
    assert out["w"] is not mean["w"]


def test_weighted_mean_uses_the_largest_share() -> None:
    assert server_noise_std(clip_norm=2.0, noise_multiplier=1.5, n_participants=4) == 0.75
    assert server_noise_std(clip_norm=2.0, noise_multiplier=1.5, n_participants=4,
                            max_weight_share=0.5) == 1.5
    with pytest.raises(PrivacyError, match="max_weight_share"):
        server_noise_std(clip_norm=1.0, noise_multiplier=1.0, n_participants=4,
                         max_weight_share=0.1)


@pytest.mark.parametrize("kwargs", [
    dict(clip_norm=0.0, noise_multiplier=1.0, n_participants=2),
    dict(clip_norm=1.0, noise_multiplier=-1.0, n_participants=2),
    dict(clip_norm=1.0, noise_multiplier=float("nan"), n_participants=2),
    dict(clip_norm=1.0, noise_multiplier=1.0, n_participants=0),
])
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(PrivacyError):
        server_noise_std(**kwargs)  # type: ignore[arg-type]
