"""A simulated fleet: N real edge agents (the real ``edge_agent`` code, each with its own MQTT
connection, key, state file and data shard) as asyncio tasks in this process.

Only the device is simulated — its battery, heat, link and compute speed come from a
:class:`~edge_agent.probes.SimulatedProbe` and a per-device step time; everything on the wire
is real. ``time_scale`` makes a long day of fleet life (battery curves, link outages) run in
minutes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from edge_agent.probes import (
    Schedule,
    SimulatedProbe,
    SimulationProfile,
    always,
    intervals,
    periodic,
)
from edge_agent.tls import tls_context
from orchestrator.config import Config
from orchestrator.convergence.datasets import (
    Dataset,
    load_named,
    partition_dirichlet,
    partition_iid,
    split_train_test,
)
from orchestrator.devices.commands import provision
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import Store
from schemas import Bundle


@dataclass(frozen=True, slots=True)
class FleetSpec:
    """What fleet to simulate. Times are simulated seconds unless named otherwise."""

    devices: int = 20
    dataset: str = "digits"
    """``digits``, ``wine``, ``breast_cancer`` or a path to an ``.npz`` with ``X`` and ``y``."""
    split: Literal["iid", "dirichlet"] = "dirichlet"
    alpha: float = 0.5
    seed: int = 0
    test_fraction: float = 0.2
    step_ms_median: float = 0.0
    """Simulated compute per training step, drawn per device from a lognormal around this
    median (0: devices run at this machine's speed)."""
    step_sigma: float = 0.0
    offline_fraction: float = 0.0
    """Share of devices whose link drops for long stretches."""
    outage_s: float = 1800.0
    online_s: float = 1800.0
    battery_fraction: float = 0.5
    """Share of devices on battery (the rest are mains powered)."""
    time_scale: float = 60.0
    id_prefix: str = "sim"

    def __post_init__(self) -> None:
        if self.devices <= 0:
            raise ValueError("devices must be > 0")
        if not 0 < self.alpha:
            raise ValueError("alpha must be > 0")
        for name in ("offline_fraction", "battery_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.step_ms_median < 0 or self.step_sigma < 0 or self.time_scale <= 0:
            raise ValueError("step_ms_median and step_sigma must be >= 0, time_scale > 0")

    def device_ids(self) -> list[str]:
        width = max(3, len(str(self.devices - 1)))
        return [f"{self.id_prefix}-{i:0{width}d}" for i in range(self.devices)]


@dataclass(frozen=True, slots=True)
class FleetData:
    shards: list[LocalData]
    test: Dataset
    """The held-out test split (never given to any device): for server-side evaluation."""
    n_classes: int


def shard_data(spec: FleetSpec) -> FleetData:
    """Load the dataset, hold out a test split, and partition the rest over the devices
    (``split``; unlabeled data is always split iid, a Dirichlet split needs classes)."""
    data = load_named(spec.dataset)
    train, test = split_train_test(data, test_fraction=spec.test_fraction, seed=spec.seed)
    rng = np.random.default_rng(spec.seed)
    labels = train.y
    if labels is None:  # unlabeled (anomaly detection, autoencoders): no classes to skew by
        parts = partition_iid(train.X, spec.devices, rng)
    elif spec.split == "iid":
        parts = partition_iid(labels, spec.devices, rng)
    else:
        parts = partition_dirichlet(labels, spec.devices, spec.alpha, rng)
    shards = [LocalData(X=train.X[idx], y=None if labels is None else labels[idx])
              for idx in parts]
    return FleetData(shards=shards, test=test, n_classes=data.n_classes)


async def provision_fleet(config: Config, device_ids: Sequence[str]) -> list[Bundle]:
    """Create each device in the orchestrator's store and broker password file (as
    ``fedmq device add`` does) and return the enrollment bundles."""
    key = load_or_create_key(config.federation.key_path)
    config.federation.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with Store.open(config.federation.store_path,
                          federation_id=config.federation.id) as store:
        return [await provision(store, config, device_id, orchestrator_key=public_key_hex(key),
                                actor="simulator")
                for device_id in device_ids]


@dataclass(frozen=True, slots=True)
class DeviceSim:
    """One simulated device's character."""

    step_ms: float
    profile: SimulationProfile
    plugged: Schedule
    link: Schedule
    device_class: str


def device_sims(spec: FleetSpec) -> list[DeviceSim]:
    """Draw each device's speed, power and link behaviour (deterministic for a seed)."""
    rng = np.random.default_rng(spec.seed + 1)
    n = spec.devices
    offline = set(rng.choice(n, size=round(n * spec.offline_fraction), replace=False).tolist())
    on_battery = set(rng.choice(n, size=round(n * spec.battery_fraction), replace=False).tolist())
    sims = []
    for i in range(n):
        step_ms = 0.0
        if spec.step_ms_median > 0:
            step_ms = float(spec.step_ms_median * math.exp(rng.normal(0.0, spec.step_sigma)))
        battery = float(rng.uniform(40, 100)) if i in on_battery else None
        profile = SimulationProfile(battery_pct=battery, cores=int(rng.choice([1, 2, 4])),
                                    free_mem_mb=float(rng.choice([128, 256, 512])))
        # battery devices are plugged in for a third of each simulated day
        plugged = always(True) if battery is None else periodic(
            24 * 3600, 8 * 3600, phase_s=float(rng.uniform(0, 24 * 3600)))
        link = always(True)
        if i in offline:
            period = spec.online_s + spec.outage_s
            phase = float(rng.uniform(0, period))
            link = periodic(period, spec.online_s, phase_s=phase)
        klass = "fast" if step_ms <= spec.step_ms_median else "slow"
        if spec.step_ms_median == 0:
            klass = "mains" if battery is None else "battery"
        sims.append(DeviceSim(step_ms=step_ms, profile=profile, plugged=plugged, link=link,
                              device_class=klass))
    return sims


class Fleet:
    """An async context manager running one :class:`Agent` per bundle; leaving stops them."""

    def __init__(
        self,
        bundles: Sequence[Bundle],
        shards: Sequence[LocalData],
        workdir: str | Path,
        spec: FleetSpec,
        *,
        agent_config: AgentConfig | None = None,
        sims: Sequence[DeviceSim] | None = None,
    ) -> None:
        if len(bundles) != len(shards):
            raise ValueError("one data shard per bundle")
        self._bundles = list(bundles)
        self._shards = list(shards)
        self._workdir = Path(workdir)
        self._spec = spec
        self._base = agent_config or AgentConfig()
        self._sims = list(sims) if sims is not None else device_sims(spec)
        self._stack = contextlib.AsyncExitStack()
        self.agents: list[Agent] = []
        self.probes: list[SimulatedProbe] = []

    async def __aenter__(self) -> Fleet:
        self._workdir.mkdir(parents=True, exist_ok=True)
        try:
            for i, (bundle, data) in enumerate(zip(self._bundles, self._shards, strict=True)):
                sim = self._sims[i % len(self._sims)]
                probe = SimulatedProbe(sim.profile, plugged=sim.plugged, link=sim.link,
                                       time_scale=self._spec.time_scale)
                config = replace(self._base, device_class=sim.device_class,
                                 seed=self._spec.seed * 10_000 + i,
                                 simulated_step_ms=sim.step_ms / self._spec.time_scale)
                state = self._workdir / f"{bundle.device_id}.db"
                agent = Agent(bundle, data, state, config=config, probe=probe,
                              tls_context=tls_context(bundle, state))
                await self._stack.enter_async_context(agent)
                self.agents.append(agent)
                self.probes.append(probe)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stack.aclose()

    def online(self) -> int:
        return sum(1 for a in self.agents if a.session.connected)

    def outbox_total(self) -> int:
        return sum(len(a.outbox) for a in self.agents)


__all__ = ["DeviceSim", "Fleet", "FleetData", "FleetSpec", "device_sims", "intervals",
           "provision_fleet", "shard_data"]
