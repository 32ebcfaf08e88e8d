"""Synthetic 3-axis machine vibration, one non-IID shard per device.

A rotating shaft at speed f_r (Hz) shakes its bearing housing at f_r and its harmonics; the
sensor has two radial axes (90 degrees apart, so the 1x appears with a quarter-turn phase
shift between them) and one axial axis. Healthy: a weak 1x and a trace of 2x over broadband
noise. Imbalance: a centrifugal force turning with the shaft, i.e. a strong radial 1x.
Misalignment: bending at the coupling, i.e. strong 2x and 3x, mostly in the axial direction.
Bearing fault: a defect on a race is struck at the defect frequency (about 3-3.6 x f_r for an
outer race); each strike rings the housing's high-frequency resonance, decaying in a few
milliseconds, and the strikes are amplitude-modulated by the shaft turn (load zone).
Devices differ in their speed range, noise level, sensor gain per channel, resonance, defect
ratio and a small DC offset, so shards are non-IID while the fault signatures stay learnable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CLASSES",
    "SAMPLE_RATE_HZ",
    "AnomalyShard",
    "make_vibration",
    "make_vibration_anomaly",
    "power_spectra",
]

SAMPLE_RATE_HZ = 1024.0
CLASSES = ("healthy", "imbalance", "misalignment", "bearing")

FloatArray = NDArray[np.float32]


@dataclass(frozen=True)
class _Device:
    speed_lo: float
    speed_hi: float
    noise: float
    gain: NDArray[np.float64]  # [channels]
    offset: NDArray[np.float64]  # [channels]
    resonance_hz: float
    defect_ratio: float


@dataclass(frozen=True)
class AnomalyShard:
    """One device's anomaly-detection data: healthy training windows, a mixed test set."""

    train: FloatArray  # [n_train, channels*window], healthy only
    test: FloatArray  # [n_test, channels*window]
    is_anomaly: NDArray[np.bool_]  # [n_test]

    def __post_init__(self) -> None:
        if self.test.shape[0] != self.is_anomaly.shape[0]:
            raise ValueError("test and is_anomaly differ in length")


def _device(rng: np.random.Generator, channels: int) -> _Device:
    lo = rng.uniform(20.0, 35.0)
    return _Device(
        speed_lo=lo,
        speed_hi=lo + rng.uniform(5.0, 12.0),
        noise=rng.uniform(0.06, 0.16),
        gain=rng.uniform(0.7, 1.4, channels),
        offset=rng.uniform(-0.2, 0.2, channels),
        resonance_hz=rng.uniform(280.0, 420.0),
        defect_ratio=rng.uniform(3.0, 3.6),
    )


def _windows(
    rng: np.random.Generator, dev: _Device, labels: NDArray[np.int64], window: int, channels: int
) -> FloatArray:
    """[n, channels, window] windows of the given classes for one device."""
    n = labels.shape[0]
    t = np.arange(window) / SAMPLE_RATE_HZ  # [L]
    f_r = rng.uniform(dev.speed_lo, dev.speed_hi, (n, 1))  # [n, 1]
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1))
    turn = 2 * np.pi * f_r * t + phase  # shaft angle, [n, L]
    lab = labels[:, None]

    # amplitudes of the 1x, 2x, 3x harmonics on the radial and axial axes, per window
    a1 = np.where(lab == 1, rng.uniform(0.7, 1.2, (n, 1)), rng.uniform(0.2, 0.4, (n, 1)))
    a2 = np.where(lab == 2, rng.uniform(0.3, 0.6, (n, 1)), rng.uniform(0.02, 0.08, (n, 1)))
    a3 = np.where(lab == 2, rng.uniform(0.15, 0.35, (n, 1)), 0.0)
    axial_gain = np.where(lab == 2, 1.5, 0.3)  # misalignment shows mostly in the axial axis

    impulses = np.zeros((n, window))
    fault = labels == 3
    if fault.any():
        impulses[fault] = _bearing(rng, dev, f_r[fault], phase[fault], t)

    x = np.empty((n, channels, window))
    for c in range(channels):
        axial = c % 3 == 2
        shift = 0.0 if axial else c * np.pi / 2  # radial axes 90 degrees apart
        harmonics = (
            a1 * np.cos(turn + shift) + a2 * np.cos(2 * turn + shift) + a3 * np.cos(3 * turn)
        )
        if axial:
            harmonics = axial_gain * harmonics
        ring = impulses * (0.6 if axial else 1.0)
        noise = dev.noise * rng.standard_normal((n, window))
        x[:, c, :] = dev.gain[c] * (harmonics + ring + noise) + dev.offset[c]
    return x.astype(np.float32)


def _bearing(
    rng: np.random.Generator,
    dev: _Device,
    f_r: NDArray[np.float64],
    phase: NDArray[np.float64],
    t: NDArray[np.float64],
) -> NDArray[np.float64]:
    """Decaying resonance rung at each defect strike, modulated by the shaft turn."""
    n = f_r.shape[0]
    period = 1.0 / (dev.defect_ratio * f_r)  # [n, 1]
    start = rng.uniform(0.0, 1.0, (n, 1)) * period
    since = np.mod(t - start, period)  # time since the last strike, [n, L]
    strike_time = t - since
    decay = np.exp(-since / 0.005)
    ring = np.sin(2 * np.pi * dev.resonance_hz * since) * decay
    load = 1.0 + 0.5 * np.cos(2 * np.pi * f_r * strike_time + phase)
    amplitude = rng.uniform(0.5, 1.0, (n, 1))
    return amplitude * load * ring  # type: ignore[no-any-return]


def _balanced_labels(rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    return rng.permutation(np.arange(n, dtype=np.int64) % len(CLASSES))


def make_vibration(
    n_devices: int,
    samples_per_device: int,
    *,
    window: int = 128,
    channels: int = 3,
    seed: int = 0,
    faults: bool = True,
) -> list[tuple[FloatArray, NDArray[np.int64]]]:
    """Per-device ``(X, y)``: X float32 [n, channels*window], channel-major, y int64 in 0..3.

    ``X.reshape(n, channels, window)`` is the [N, C, L] layout of a Conv1d. Classes are
    balanced within each device (counts differ by at most one). With ``faults=False`` every
    window is healthy (y is all 0).
    """
    if n_devices < 0 or samples_per_device < 0 or window < 1 or channels < 1:
        raise ValueError("n_devices and samples_per_device must be >= 0, window, channels >= 1")
    root = np.random.default_rng(seed)
    shards: list[tuple[FloatArray, NDArray[np.int64]]] = []
    for dev_seed in root.spawn(n_devices):
        dev = _device(dev_seed, channels)
        if faults:
            y = _balanced_labels(dev_seed, samples_per_device)
        else:
            y = np.zeros(samples_per_device, dtype=np.int64)
        x = _windows(dev_seed, dev, y, window, channels)
        shards.append((x.reshape(samples_per_device, channels * window), y))
    return shards


def make_vibration_anomaly(
    n_devices: int,
    train_per_device: int,
    test_per_device: int,
    *,
    anomaly_fraction: float = 0.25,
    window: int = 128,
    channels: int = 3,
    seed: int = 0,
) -> list[AnomalyShard]:
    """Per device: unlabeled healthy windows to train on, and a test set in which a fraction
    of the windows carry one of the three faults (chosen at random), marked in is_anomaly."""
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise ValueError("anomaly_fraction must be in [0, 1]")
    if n_devices < 0 or train_per_device < 0 or test_per_device < 0:
        raise ValueError("counts must be >= 0")
    root = np.random.default_rng(seed)
    shards: list[AnomalyShard] = []
    for dev_seed in root.spawn(n_devices):
        dev = _device(dev_seed, channels)
        train = _windows(dev_seed, dev, np.zeros(train_per_device, np.int64), window, channels)
        n_bad = round(anomaly_fraction * test_per_device)
        is_anomaly = dev_seed.permutation(np.arange(test_per_device) < n_bad)
        labels = np.where(is_anomaly, dev_seed.integers(1, 4, test_per_device), 0)
        test = _windows(dev_seed, dev, labels.astype(np.int64), window, channels)
        shards.append(
            AnomalyShard(
                train=train.reshape(train_per_device, channels * window),
                test=test.reshape(test_per_device, channels * window),
                is_anomaly=is_anomaly,
            )
        )
    return shards


def power_spectra(X: NDArray[np.floating], channels: int = 3) -> FloatArray:
    """Per-channel power spectra of ``[n, channels*window]`` windows, DC dropped:
    ``[n, channels*(window//2)]`` float32 in the sensor's own (squared) units, as a sensor
    with an on-board FFT reports them."""
    n = X.shape[0]
    x = np.asarray(X, dtype=np.float64).reshape(n, channels, -1)
    power = np.abs(np.fft.rfft(x, axis=2))[:, :, 1 : x.shape[2] // 2 + 1] ** 2
    return power.reshape(n, -1).astype(np.float32)
