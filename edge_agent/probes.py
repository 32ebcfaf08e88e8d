"""Device-state probes: battery, charging, temperature, network and memory, behind one Protocol.

``SysfsProbe`` reads Linux sysfs (``/sys/class/power_supply``, ``/sys/class/thermal``) and
``/proc/meminfo`` where present; whatever is absent is reported as
unknown (battery ``None``) or benign, never as an error. ``SimulatedProbe`` models a battery
that drains (faster while training) and charges when plugged in, a temperature that rises
while training and cools when idle, and a link up/down schedule — all driven by an injected
clock and a time-scale factor, for the simulator and for tests.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from schemas import Thermal

from .errors import ConfigError

_SIM_STEP_S = 10.0
_MAX_SIM_STEPS = 10_000

Schedule = Callable[[float], bool]
"""Simulated seconds since the probe started → whether something is on (plugged, link up)."""


@dataclass(frozen=True, slots=True)
class DeviceState:
    battery_pct: float | None = None
    """None: no battery (mains powered), or unknown."""
    charging: bool = False
    thermal: Thermal = Thermal.NOMINAL
    metered: bool = False
    link_up: bool = True
    free_mem_mb: float | None = None
    cores: int = 1
    temperature_c: float | None = None


class DeviceProbe(Protocol):
    """What the agent asks about the device. ``read`` is called from the event loop and from
    the training thread, so implementations must be thread-safe and quick."""

    def read(self) -> DeviceState: ...

    def set_training(self, training: bool) -> None:
        """Told when local training starts and ends (a simulation heats up and drains)."""
        ...


@dataclass(frozen=True, slots=True)
class ThermalThresholds:
    """Temperatures (°C) from which a state is reached."""

    fair: float = 60.0
    serious: float = 75.0
    critical: float = 90.0

    def classify(self, celsius: float) -> Thermal:
        if celsius >= self.critical:
            return Thermal.CRITICAL
        if celsius >= self.serious:
            return Thermal.SERIOUS
        if celsius >= self.fair:
            return Thermal.FAIR
        return Thermal.NOMINAL


_THERMAL_ORDER = {t: i for i, t in enumerate(Thermal)}


def thermal_above(value: Thermal, limit: Thermal) -> bool:
    """Whether ``value`` is hotter than ``limit`` (nominal < fair < serious < critical)."""
    return _THERMAL_ORDER[value] > _THERMAL_ORDER[limit]


def training_blocked(device: DeviceState, min_battery_pct: float,
                     max_thermal: Thermal) -> str | None:
    """Why a task's conditions forbid training now (``battery_low``, ``overheated``), or None.
    A device on the charger may train below the battery floor."""
    if (device.battery_pct is not None and device.battery_pct < min_battery_pct
            and not device.charging):
        return "battery_low"
    if thermal_above(device.thermal, max_thermal):
        return "overheated"
    return None


# -- Linux sysfs -------------------------------------------------------------------------------


class SysfsProbe:
    """Reads the real device. ``root`` and ``proc`` are parameters so tests can point them at
    a fake tree; ``metered`` cannot be read from sysfs and is given by configuration."""

    def __init__(
        self,
        root: str | os.PathLike[str] = "/sys",
        proc: str | os.PathLike[str] = "/proc",
        *,
        thresholds: ThermalThresholds | None = None,
        metered: bool = False,
    ) -> None:
        self._root = Path(root)
        self._proc = Path(proc)
        self._thresholds = thresholds or ThermalThresholds()
        self._metered = metered

    def set_training(self, training: bool) -> None:
        """Real hardware reports its own state; nothing to model."""

    def read(self) -> DeviceState:
        battery, charging = self._power()
        temperature = self._temperature()
        return DeviceState(
            battery_pct=battery,
            charging=charging,
            thermal=(self._thresholds.classify(temperature) if temperature is not None
                     else Thermal.NOMINAL),
            metered=self._metered,
            # Interface flags say little about reaching the broker (VPNs, loopback brokers,
            # containers): the MQTT connection itself is the link test on real hardware.
            link_up=True,
            free_mem_mb=self._free_mem_mb(),
            cores=os.cpu_count() or 1,
            temperature_c=temperature,
        )

    def _power(self) -> tuple[float | None, bool]:
        supplies = _children(self._root / "class" / "power_supply")
        capacities: list[float] = []
        charging = False
        for supply in supplies:
            kind = _read(supply / "type")
            if kind == "Battery":
                capacity = _read_float(supply / "capacity")
                if capacity is not None:
                    capacities.append(max(0.0, min(100.0, capacity)))
                status = _read(supply / "status")
                if status in ("Charging", "Full"):
                    charging = True
            elif kind in ("Mains", "USB", "USB_C", "USB_PD", "Wireless"):
                if _read(supply / "online") == "1":
                    charging = True
        battery = sum(capacities) / len(capacities) if capacities else None
        # Mains power without a battery: "charging" is true, and there is nothing to drain.
        return battery, charging

    def _temperature(self) -> float | None:
        hottest: float | None = None
        for zone in _children(self._root / "class" / "thermal"):
            if not zone.name.startswith("thermal_zone"):
                continue
            milli = _read_float(zone / "temp")
            if milli is None:
                continue
            celsius = milli / 1000.0
            hottest = celsius if hottest is None else max(hottest, celsius)
        return hottest

    def _free_mem_mb(self) -> float | None:
        try:
            text = (self._proc / "meminfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                parts = line.split()
                try:
                    return float(parts[1]) / 1024.0
                except (IndexError, ValueError):
                    return None
        return None


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _read_float(path: Path) -> float | None:
    text = _read(path)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# -- simulation ----------------------------------------------------------------------------------


def always(value: bool) -> Schedule:
    return lambda _t: value


def intervals(spans: Sequence[tuple[float, float]]) -> Schedule:
    """On during each ``[start, end)`` span of simulated seconds."""
    frozen = tuple(spans)
    return lambda t: any(start <= t < end for start, end in frozen)


def periodic(period_s: float, on_s: float, phase_s: float = 0.0) -> Schedule:
    """On for the first ``on_s`` seconds of every ``period_s``, shifted by ``phase_s``."""
    if period_s <= 0 or not 0 <= on_s <= period_s:
        raise ConfigError("need period_s > 0 and 0 <= on_s <= period_s")
    return lambda t: (t + phase_s) % period_s < on_s


@dataclass(frozen=True, slots=True)
class SimulationProfile:
    """Rates of a simulated device, per simulated hour/minute."""

    battery_pct: float | None = 80.0
    """Starting charge; None for a mains-powered device."""
    drain_idle_pct_per_h: float = 2.0
    drain_training_pct_per_h: float = 30.0
    charge_pct_per_h: float = 40.0
    ambient_c: float = 30.0
    training_rise_c: float = 40.0
    """How far above ambient the device settles while training."""
    thermal_tau_s: float = 120.0
    """Time constant of heating and cooling (first-order, exponential)."""
    metered: bool = False
    free_mem_mb: float = 256.0
    cores: int = 1


class SimulatedProbe:
    """A device model integrated lazily at each ``read`` from the injected clock.

    Simulated time runs ``time_scale`` times faster than ``clock`` (seconds). Schedules get
    simulated seconds since construction.
    """

    def __init__(
        self,
        profile: SimulationProfile | None = None,
        *,
        plugged: Schedule | None = None,
        link: Schedule | None = None,
        clock: Callable[[], float] = time.monotonic,
        time_scale: float = 1.0,
        thresholds: ThermalThresholds | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ConfigError("time_scale must be positive")
        self.profile = profile or SimulationProfile()
        self._plugged = plugged or always(False)
        self._link = link or always(True)
        self._clock = clock
        self._scale = time_scale
        self._thresholds = thresholds or ThermalThresholds()
        self._lock = threading.Lock()
        self._start = self._last = clock()
        self._battery = self.profile.battery_pct
        self._temperature = self.profile.ambient_c
        self._training = False

    def set_training(self, training: bool) -> None:
        with self._lock:
            self._advance()
            self._training = training

    def set_battery(self, pct: float | None) -> None:
        """Jump the charge (tests, scripted scenarios)."""
        with self._lock:
            self._advance()
            self._battery = None if pct is None else max(0.0, min(100.0, pct))

    def read(self) -> DeviceState:
        with self._lock:
            self._advance()
            now = (self._last - self._start) * self._scale
            charging = self._battery is None or self._plugged(now)
            return DeviceState(
                battery_pct=None if self._battery is None else round(self._battery, 3),
                charging=charging,
                thermal=self._thresholds.classify(self._temperature),
                metered=self.profile.metered,
                link_up=self._link(now),
                free_mem_mb=self.profile.free_mem_mb,
                cores=self.profile.cores,
                temperature_c=round(self._temperature, 3),
            )

    def _advance(self) -> None:
        """Integrate from the last reading to now under the current mode, in steps short
        enough for the plug schedule to be followed (a read may come hours later)."""
        now = self._clock()
        dt = max(0.0, now - self._last) * self._scale
        t = (self._last - self._start) * self._scale
        self._last = now
        step = max(_SIM_STEP_S, dt / _MAX_SIM_STEPS)
        while dt > 0:
            h = min(step, dt)
            self._integrate(t, h)
            t += h
            dt -= h

    def _integrate(self, t: float, dt: float) -> None:
        p = self.profile
        if self._battery is not None:
            if self._plugged(t):
                rate = p.charge_pct_per_h
            else:
                rate = -(p.drain_training_pct_per_h if self._training else p.drain_idle_pct_per_h)
            self._battery = max(0.0, min(100.0, self._battery + rate * dt / 3600.0))
        target = p.ambient_c + (p.training_rise_c if self._training else 0.0)
        decay = math.exp(-dt / p.thermal_tau_s) if p.thermal_tau_s > 0 else 0.0
        self._temperature = target + (self._temperature - target) * decay
