"""Device probes: sysfs on a fake tree, the simulated device, and the agent's conditions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.data import LocalData
from edge_agent.probes import (
    DeviceState,
    SimulatedProbe,
    SimulationProfile,
    SysfsProbe,
    ThermalThresholds,
    intervals,
    periodic,
    training_blocked,
)
from orchestrator.models import BuiltModel
from schemas import AgentState, Thermal
from tests.support.agent_clock import FakeClock
from tests.support.fake_orchestrator import FakeOrchestrator


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def sysfs(tmp_path: Path) -> tuple[Path, Path]:
    sys_root, proc = tmp_path / "sys", tmp_path / "proc"
    _write(sys_root, "class/power_supply/BAT0/type", "Battery")
    _write(sys_root, "class/power_supply/BAT0/capacity", "42")
    _write(sys_root, "class/power_supply/BAT0/status", "Discharging")
    _write(sys_root, "class/power_supply/AC/type", "Mains")
    _write(sys_root, "class/power_supply/AC/online", "0")
    _write(sys_root, "class/thermal/thermal_zone0/temp", "48000")
    _write(sys_root, "class/thermal/thermal_zone1/temp", "77500")
    _write(sys_root, "class/thermal/cooling_device0/cur_state", "1")
    _write(proc, "meminfo", "MemTotal: 2048000 kB\nMemAvailable:  1024000 kB\n")
    return sys_root, proc


def test_sysfs_probe_reads_battery_thermal_and_memory(sysfs: tuple[Path, Path]) -> None:
    state = SysfsProbe(*sysfs).read()
    assert state.battery_pct == 42.0 and not state.charging
    assert state.temperature_c == 77.5 and state.thermal is Thermal.SERIOUS  # hottest zone
    assert state.free_mem_mb == 1000.0
    assert state.cores >= 1 and state.link_up


def test_sysfs_probe_sees_the_charger(sysfs: tuple[Path, Path]) -> None:
    sys_root, proc = sysfs
    _write(sys_root, "class/power_supply/AC/online", "1")
    assert SysfsProbe(sys_root, proc).read().charging
    _write(sys_root, "class/power_supply/AC/online", "0")
    _write(sys_root, "class/power_supply/BAT0/status", "Charging")
    assert SysfsProbe(sys_root, proc).read().charging


def test_sysfs_probe_without_battery_thermal_or_proc(tmp_path: Path) -> None:
    state = SysfsProbe(tmp_path / "none", tmp_path / "none").read()
    assert state == DeviceState(battery_pct=None, charging=False, thermal=Thermal.NOMINAL,
                                free_mem_mb=None, cores=state.cores, temperature_c=None)


def test_sysfs_probe_tolerates_garbage(sysfs: tuple[Path, Path]) -> None:
    sys_root, proc = sysfs
    _write(sys_root, "class/power_supply/BAT0/capacity", "lots")
    _write(sys_root, "class/thermal/thermal_zone0/temp", "nan")
    _write(sys_root, "class/thermal/thermal_zone1/temp", "")
    _write(proc, "meminfo", "MemAvailable: many kB\n")
    state = SysfsProbe(sys_root, proc).read()
    assert state.battery_pct is None and state.temperature_c is None
    assert state.free_mem_mb is None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_simulated_battery_drains_faster_while_training_and_charges_when_plugged() -> None:
    clock = Clock()
    profile = SimulationProfile(battery_pct=50.0, drain_idle_pct_per_h=1.0,
                                drain_training_pct_per_h=10.0, charge_pct_per_h=20.0)
    # plugged in from the third simulated hour until a little after it
    probe = SimulatedProbe(profile, plugged=intervals([(7200, 10900)]), clock=clock,
                           time_scale=60.0)
    clock.t += 60  # one simulated hour idle
    assert probe.read().battery_pct == pytest.approx(49.0)
    probe.set_training(True)
    clock.t += 60  # one hour training
    assert probe.read().battery_pct == pytest.approx(39.0)
    clock.t += 60  # one hour training, but plugged
    state = probe.read()
    assert state.battery_pct == pytest.approx(59.0) and state.charging
    probe.set_training(False)
    clock.t += 60 * 100  # a long idle stretch: empty, never negative
    assert probe.read().battery_pct == 0.0


def test_simulated_thermal_heats_while_training_and_cools_when_idle() -> None:
    clock = Clock()
    profile = SimulationProfile(ambient_c=30.0, training_rise_c=60.0, thermal_tau_s=60.0)
    probe = SimulatedProbe(profile, clock=clock, time_scale=10.0,
                           thresholds=ThermalThresholds(fair=50, serious=70, critical=85))
    assert probe.read().thermal is Thermal.NOMINAL
    probe.set_training(True)
    temps: list[float] = []
    for _ in range(6):
        clock.t += 6  # one simulated minute each
        celsius = probe.read().temperature_c
        assert celsius is not None
        temps.append(celsius)
    assert temps == sorted(temps) and temps[-1] == pytest.approx(90 - 60 * math.exp(-6), abs=1e-3)
    assert probe.read().thermal is Thermal.CRITICAL
    probe.set_training(False)
    clock.t += 60
    assert probe.read().thermal is Thermal.NOMINAL


def test_simulated_link_schedule_and_mains_power() -> None:
    clock = Clock()
    probe = SimulatedProbe(SimulationProfile(battery_pct=None), link=periodic(100, 80),
                           clock=clock)
    ups = []
    for _ in range(10):
        ups.append(probe.read().link_up)
        clock.t += 10
    assert ups == [True] * 8 + [False] * 2
    state = probe.read()
    assert state.battery_pct is None and state.charging  # mains powered: nothing to drain


def test_training_conditions() -> None:
    low = DeviceState(battery_pct=15.0)
    assert training_blocked(low, 20.0, Thermal.SERIOUS) == "battery_low"
    assert training_blocked(dataclasses.replace(low, charging=True), 20.0, Thermal.SERIOUS) is None
    hot = DeviceState(battery_pct=90.0, thermal=Thermal.CRITICAL)
    assert training_blocked(hot, 20.0, Thermal.SERIOUS) == "overheated"
    assert training_blocked(hot, 20.0, Thermal.CRITICAL) is None
    assert training_blocked(DeviceState(), 99.0, Thermal.NOMINAL) is None  # no battery


async def test_agent_does_not_train_below_the_battery_floor_and_says_so(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
    fake_clock: FakeClock,
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-low")
    await orch.publish_model(built_model)
    probe = SimulatedProbe(SimulationProfile(battery_pct=12.0, drain_idle_pct_per_h=0.0),
                           clock=fake_clock.monotonic)
    config = dataclasses.replace(agent_config, heartbeat_s=0.2, link_poll_s=3600.0)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config, probe=probe,
                          clock=fake_clock) as agent:
        await ready(agent, orch)
        await orch.send_task("dev-low", min_battery_pct=20.0)
        await orch.wait_until(lambda: any(
            s.state is AgentState.PAUSED and s.reason == "battery_low"
            for s in orch.statuses_of("dev-low")))
        assert orch.statuses_of("dev-low")[-1].battery_pct == pytest.approx(12.0)
        assert agent.stats.updates_built == 0 and agent.stats.paused["battery_low"] == 1

        probe.set_battery(60.0)  # recharged: the next heartbeat ends the pause
        sleeper = await fake_clock.sleeper(lambda s: s.duration == pytest.approx(0.2))
        await fake_clock.advance(sleeper.remaining)
        await orch.wait_until(lambda: orch.statuses_of("dev-low")[-1].state is AgentState.IDLE)
        task = await orch.send_task("dev-low", min_battery_pct=20.0)
        await orch.wait_until(lambda: len(orch.updates) == 1)
    assert orch.updates[0].update.task_id == task.task_id


async def test_training_stops_early_when_the_battery_runs_down(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-drain")
    await orch.publish_model(built_model)
    # Every monotonic read moves the clock 1 ms on: the stop check reads it once per step, so
    # time passes with the steps taken, not with the machine's speed. 360 %/h of simulated
    # time at 360x is 36 % per clock second: from 24 % the floor of 20 % is crossed after
    # about 110 ms, i.e. about a hundred steps into the 80,000-step task, on any machine.
    clock = FakeClock(tick_s=0.001)
    probe = SimulatedProbe(SimulationProfile(battery_pct=24.0, drain_idle_pct_per_h=0.0,
                                             drain_training_pct_per_h=360.0),
                           clock=clock.monotonic, time_scale=360.0)
    config = dataclasses.replace(agent_config, probe_interval_s=0.01, link_poll_s=3600.0)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config, probe=probe,
                          clock=clock) as agent:
        await ready(agent, orch)
        await orch.send_task("dev-drain", min_battery_pct=20.0, epochs=10_000)
        await orch.wait_until(lambda: any(
            s.state is AgentState.PAUSED and s.reason == "battery_low"
            for s in orch.statuses_of("dev-drain")))
        await orch.wait_until(lambda: len(orch.updates) == 1)  # the partial work is sent
    update = orch.updates[0].update
    assert 50 < update.local_steps < 200  # about 110: one clock ms per step
    assert agent.stats.paused["battery_low"] == 1


def test_storage_full_recognises_sqlite_and_enospc() -> None:
    import errno
    import sqlite3

    from edge_agent.errors import storage_full

    assert storage_full(sqlite3.OperationalError("database or disk is full"))
    assert storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not storage_full(sqlite3.OperationalError("database is locked"))
    assert not storage_full(ValueError("disk is full"))
