"""The flood watch on a fake clock: coalesced audit rows, isolation, cooldown, restart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from orchestrator.config import Config, parse_config
from orchestrator.devices.flood import FloodWatch
from orchestrator.devices.registry import Registry
from orchestrator.link.rates import Lane, RateLimiter
from orchestrator.store import Store
from tests.support.clock import FakeClock

LIMITS = {"updates_per_s": 1.0, "updates_burst": 2, "flood_after_s": 2.0,
          "audit_interval_s": 5.0, "flood_cooldown_s": 60.0}


class _Standing:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.isolated_calls: list[tuple[str, str]] = []

    async def isolated(self, device: str, reason: str) -> None:
        await self.registry.reload_device(device)
        self.isolated_calls.append((device, reason))


class _Logins:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def suspend(self, config: Config, device: str) -> bool:
        self.calls.append(("suspend", device))
        return True

    def restore(self, config: Config, device: str) -> bool:
        self.calls.append(("restore", device))
        return True


def _config(tmp_path: Path, **limits: float) -> Config:
    return parse_config({"federation": {"id": "f", "data_dir": str(tmp_path)},
                         "model": {"kind": "softmax", "n_features": 4, "n_classes": 2},
                         "limits": {**LIMITS, **limits}}, base_dir=tmp_path)


async def _watch(store: Store, config: Config, clock: FakeClock, logins: _Logins
                 ) -> tuple[FloodWatch, RateLimiter, _Standing, Counter[str]]:
    registry = Registry(store)
    await registry.load()
    limiter, standing = RateLimiter(config.limits, clock), _Standing(registry)
    counters: Counter[str] = Counter()
    watch = FloodWatch(limiter, config=config, store=store, registry=registry, standing=standing,
                       counters=counters, clock=clock, suspend=logins.suspend,
                       restore=logins.restore)
    await watch.load()
    return watch, limiter, standing, counters


async def _flood(watch: FloodWatch, limiter: RateLimiter, clock: FakeClock, device: str,
                 seconds: float) -> None:
    """``device`` sends 50 messages every 0.1 s; the watch ticks every second."""
    for step in range(round(seconds * 10)):
        for _ in range(50):
            limiter.admit(device, Lane.UPDATES, 100)
        await clock.advance(0.1)
        if step % 10 == 9:
            await watch.tick()


@pytest.mark.parametrize("cooldown", [60.0, 0.0])
async def test_a_flood_is_audited_coalesced_isolated_and_released_after_the_cooldown(
    tmp_path: Path, cooldown: float,
) -> None:
    clock, logins = FakeClock(), _Logins()
    config = _config(tmp_path, flood_cooldown_s=cooldown)
    async with Store.open(tmp_path / "s.db") as store:
        for name in ("dev-f", "dev-h"):
            await store.add_device(name, secret=b"s" * 32, status="active")
        watch, limiter, standing, counters = await _watch(store, config, clock, logins)
        await _flood(watch, limiter, clock, "dev-f", 4.0)
        assert standing.isolated_calls == [("dev-f", "flood")]
        assert logins.calls == [("suspend", "dev-f")]
        device = await store.get_device("dev-f")
        assert device is not None and device.status == "isolated"
        (isolated,) = await store.list_audit(event="isolated")
        assert isolated.reason == "flood" and isolated.detail["lane"] == "updates"
        # ~2,000 refused messages, written as a handful of rows
        await _flood(watch, limiter, clock, "dev-f", 6.0)
        await clock.advance(5.0)
        await watch.tick()
        rows = await store.list_audit(event="refused", device="dev-f")
        assert 1 <= len(rows) <= 4
        assert all(r.reason == "rate_limited" and r.detail["lane"] == "updates" for r in rows)
        assert sum(r.detail["count"] for r in rows) > 1900
        assert await store.list_audit(event="refused", device="dev-h") == []

        # a restart keeps the flooder and its release time
        watch, limiter, standing, counters = await _watch(store, config, clock, logins)
        assert set(watch.flooded) == {"dev-f"}
        await clock.advance(60.0)
        await watch.tick()
        device = await store.get_device("dev-f")
        assert device is not None
        if cooldown:
            assert device.status == "active" and logins.calls[-1] == ("restore", "dev-f")
            (back,) = await store.list_audit(event="reinstated")
            assert back.reason == "flood_cooldown" and counters["flood.reinstated"] == 1
            assert watch.flooded == {}
        else:
            assert device.status == "isolated" and logins.calls == [("suspend", "dev-f")]
            assert set(watch.flooded) == {"dev-f"}


async def test_an_operator_reinstatement_forgets_the_flooder(tmp_path: Path) -> None:
    clock, logins = FakeClock(), _Logins()
    config = _config(tmp_path, flood_cooldown_s=0.0)
    async with Store.open(tmp_path / "s.db") as store:
        await store.add_device("dev-f", secret=b"s" * 32, status="active")
        watch, limiter, standing, _ = await _watch(store, config, clock, logins)
        await _flood(watch, limiter, clock, "dev-f", 4.0)
        assert set(watch.flooded) == {"dev-f"}
        await store.set_status("dev-f", "active")  # fedmq device reinstate
        await standing.registry.reload_device("dev-f")
        await watch.tick()
        assert watch.flooded == {}
        watch, *_ = await _watch(store, config, clock, logins)
        assert watch.flooded == {}


async def test_an_unknown_sender_loses_its_login_but_is_not_recorded(tmp_path: Path) -> None:
    """An account with a broker login but no device record (a leftover credential)."""
    clock, logins = FakeClock(), _Logins()
    config = _config(tmp_path)
    async with Store.open(tmp_path / "s.db") as store:
        watch, limiter, standing, counters = await _watch(store, config, clock, logins)
        await _flood(watch, limiter, clock, "ghost", 4.0)
        assert logins.calls == [("suspend", "ghost")] and standing.isolated_calls == []
        assert watch.flooded == {} and counters["flood.isolated"] == 1


def test_limits_reject_a_byte_burst_below_the_largest_update() -> None:
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match=r"limits\.bytes_burst: must be >= ingest\."):
        parse_config({"federation": {"id": "f"},
                      "model": {"kind": "softmax", "n_features": 4, "n_classes": 2},
                      "ingest": {"max_update_bytes": 4096}, "limits": {"bytes_burst": 2048}})
