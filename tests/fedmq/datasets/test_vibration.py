from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedmq.datasets.vibration import (
    CLASSES,
    SAMPLE_RATE_HZ,
    make_vibration,
    make_vibration_anomaly,
)


def spectral_features(x: NDArray[np.float32], channels: int = 3) -> NDArray[np.float64]:
    """Log mean FFT magnitude in 8 bands of 8 bins per channel (the DC bin dropped)."""
    n = x.shape[0]
    mag = np.abs(np.fft.rfft(x.reshape(n, channels, -1), axis=2))[:, :, 1:65]
    bands = mag.reshape(n, channels, 8, 8).mean(axis=3)
    features: NDArray[np.float64] = np.log(bands + 1e-3).reshape(n, -1)
    return features


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = make_vibration(3, 20, seed=7)
    b = make_vibration(3, 20, seed=7)
    c = make_vibration(3, 20, seed=8)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])


@pytest.mark.parametrize(("channels", "window"), [(3, 128), (3, 64), (1, 32), (5, 100)])
def test_shapes_and_dtypes(channels: int, window: int) -> None:
    shards = make_vibration(2, 10, window=window, channels=channels, seed=0)
    assert len(shards) == 2
    for x, y in shards:
        assert x.shape == (10, channels * window)
        assert x.dtype == np.float32
        assert y.shape == (10,)
        assert y.dtype == np.int64
        assert np.isfinite(x).all()
        assert set(np.unique(y)) <= set(range(len(CLASSES)))


def test_layout_is_channel_major() -> None:
    # the axial channel (2) carries misalignment most strongly: if the flattening were
    # time-major, reshaping to [N, C, L] would mix channels and this would not hold
    x, y = make_vibration(1, 200, seed=3)[0]
    windows = x.reshape(-1, 3, 128)
    mis = windows[y == 2]
    spec = np.abs(np.fft.rfft(mis - mis.mean(axis=2, keepdims=True), axis=2)).mean(axis=(0, 2))
    assert spec[2] > spec[0] and spec[2] > spec[1]


def test_classes_are_balanced_in_each_device() -> None:
    for _, y in make_vibration(4, 103, seed=1):
        counts = np.bincount(y, minlength=4)
        assert counts.max() - counts.min() <= 1


def test_without_faults_all_healthy() -> None:
    for _, y in make_vibration(2, 16, seed=0, faults=False):
        assert (y == 0).all()


def test_devices_differ() -> None:
    shards = make_vibration(4, 200, seed=0)
    healthy = [x.reshape(-1, 3, 128)[y == 0] for x, y in shards]
    offsets = np.array([w.mean(axis=(0, 2)) for w in healthy])  # DC offset per channel
    spreads = np.array([w.std(axis=(0, 2)) for w in healthy])  # gain and noise
    # shaft speed: the peak of the zero-padded radial spectrum, the median over a device
    freqs = np.fft.rfftfreq(2048, 1 / SAMPLE_RATE_HZ)
    speeds = []
    for w in healthy:
        radial = w[:, 0] - w[:, 0].mean(axis=1, keepdims=True)
        speeds.append(np.median(freqs[np.abs(np.fft.rfft(radial, n=2048)).argmax(axis=1)]))
    assert np.ptp(offsets, axis=0).min() > 0.02
    assert np.ptp(spreads, axis=0).min() > 0.02
    assert np.ptp(speeds) > 3.0
    assert all(15.0 < s < 50.0 for s in speeds)


def test_a_linear_model_on_spectra_generalises_to_held_out_devices() -> None:
    shards = make_vibration(12, 100, seed=0)
    x_train = np.concatenate([spectral_features(x) for x, _ in shards[:8]])
    y_train = np.concatenate([y for _, y in shards[:8]])
    x_test = np.concatenate([spectral_features(x) for x, _ in shards[8:]])
    y_test = np.concatenate([y for _, y in shards[8:]])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)
    assert model.score(x_test, y_test) > 0.9


def test_anomaly_split() -> None:
    shards = make_vibration_anomaly(3, 40, 20, anomaly_fraction=0.25, seed=5)
    again = make_vibration_anomaly(3, 40, 20, anomaly_fraction=0.25, seed=5)
    assert len(shards) == 3
    for shard, same in zip(shards, again, strict=True):
        assert shard.train.shape == (40, 3 * 128)
        assert shard.test.shape == (20, 3 * 128)
        assert shard.train.dtype == shard.test.dtype == np.float32
        assert shard.is_anomaly.dtype == np.bool_
        assert shard.is_anomaly.sum() == 5
        np.testing.assert_array_equal(shard.test, same.test)
        np.testing.assert_array_equal(shard.is_anomaly, same.is_anomaly)


def test_anomalies_stand_out_from_the_healthy_training_windows() -> None:
    # a per-device squared z-score of band energies against the healthy training windows
    for shard in make_vibration_anomaly(4, 100, 40, seed=2):
        train = spectral_features(shard.train)
        test = spectral_features(shard.test)
        mu, sd = train.mean(axis=0), train.std(axis=0) + 1e-6
        score = (((test - mu) / sd) ** 2).mean(axis=1)
        bad, good = score[shard.is_anomaly], score[~shard.is_anomaly]
        ranked = (bad[:, None] > good[None, :]).mean()  # the ROC AUC of the score
        assert ranked > 0.9


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_vibration(-1, 10)
    with pytest.raises(ValueError):
        make_vibration_anomaly(1, 10, 10, anomaly_fraction=1.5)
