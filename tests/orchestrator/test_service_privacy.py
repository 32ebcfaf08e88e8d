"""Differential privacy through the running service (real Mosquitto, real store): tasks carry
the clip and noise, each version charges its participants in its own transaction and advances
the federation accountant, and a device whose budget is spent is never tasked again."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from orchestrator.aggregation.strategy import BufferedUpdate
from orchestrator.cli import privacy as privacy_cli
from orchestrator.config import Config, ConfigError, parse_config
from orchestrator.privacy import DeviceLedger, FederationAccountant
from orchestrator.privacy.runtime import PrivacyRuntime
from orchestrator.service import Orchestrator
from orchestrator.store import Store
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.strategies import optimizer_from, strategy_from
from schemas import AckOutcome, Defer, Task
from tests.support.service_config import config_dict
from tests.support.sim_device import random_delta

DP = {"mode": "local", "clip_norm": 1.0, "noise_multiplier": 1.0, "target_delta": 1e-5}


async def _ask(dev: Any) -> Task | Defer:
    await dev.status(battery_pct=90.0)
    answer = await dev.next("task")
    assert isinstance(answer, Task | Defer)
    return answer


async def _contribute(orch: Orchestrator, *devs: Any) -> None:
    """Each device sends one update on the current version; waits for the next version."""
    target = orch.version + 1
    for i, dev in enumerate(devs):
        seq, update = dev.update(random_delta(orch.params, seed=orch.version * 10 + i),
                                 base_version=orch.version)
        await dev.send(update)
        assert (await dev.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED
    async with asyncio.timeout(10):
        await orch.wait_for_version(target)


async def _epsilon(orch: Orchestrator, version: int) -> float:
    """The version's epsilon, once the service's accounting task recorded it."""
    async with asyncio.timeout(20):
        while True:
            metrics = (await orch.store.get_version(version)).info.metrics
            if "privacy_epsilon" in metrics:
                return float(metrics["privacy_epsilon"])
            await asyncio.sleep(0.05)


def _rdp_epsilon(q: float, z: float, steps: int, delta: float) -> float:
    """dp-accounting's own calculation, written out independently of orchestrator.privacy
    (q = 1: the plain Gaussian mechanism)."""
    accountant = RdpAccountant()
    gaussian = dp_accounting.GaussianDpEvent(z)
    accountant.compose(gaussian if q == 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian),
                       steps)
    return float(accountant.get_epsilon(delta))


async def test_versions_charge_devices_and_the_epsilon_matches_dp_accounting(
    make_config: Callable[..., Config], devices: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(privacy=DP, aggregation={"k": 2})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        devs = [await devices(orch, f"d{i}") for i in range(4)]
        task = await _ask(devs[0])
        assert isinstance(task, Task)
        assert (task.clip_norm, task.noise_multiplier, task.seal) == (1.0, 1.0, True)

        epsilons = []
        for v in range(3):
            await _contribute(orch, devs[v % 2], devs[2 + v % 2])
            epsilons.append(await _epsilon(orch, orch.version))
        assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1]
        # 2 of 4 active devices per version, noise multiplier 1.0, 3 versions; sampling
        # "none" (the default): no amplification, each version a plain Gaussian mechanism
        expected = _rdp_epsilon(1.0, 1.0, 3, 1e-5)
        assert epsilons[-1] == pytest.approx(expected, rel=1e-9)
        assert epsilons[0] == pytest.approx(_rdp_epsilon(1.0, 1.0, 1, 1e-5), rel=1e-9)
        assert expected > _rdp_epsilon(0.5, 1.0, 3, 1e-5)  # what Poisson would have claimed
        saved = await orch.store.get_server_state(StateKey.ACCOUNTANT)
        assert saved is not None
        assert FederationAccountant.from_state(saved).epsilon() == pytest.approx(expected)
        ledger = await orch.store.privacy_ledger()
        assert [(r.version, r.device_id) for r in ledger] == [
            (1, "d0"), (1, "d2"), (2, "d1"), (2, "d3"), (3, "d0"), (3, "d2")]
        assert {(r.noise_multiplier, r.clip_norm, r.mode) for r in ledger} == {
            (1.0, 1.0, "local")}

    # the operator's report reads the same figures from the store
    code = await asyncio.to_thread(
        privacy_cli.main, ["report", "--db", str(config.federation.store_path), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["epsilon"] == pytest.approx(expected)
    assert report["versions_accounted"] == 3
    assert {d["device_id"]: d["participations"] for d in report["devices"]} == {
        "d0": 2, "d1": 1, "d2": 2, "d3": 1}


async def test_a_device_with_a_spent_budget_is_never_tasked_again(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    # a budget that allows exactly one participation at noise multiplier 1.0
    probe = DeviceLedger(1.0, 1e-5)
    one = probe.epsilon_after_next("x")
    probe.record("x", 1.0)
    two = probe.epsilon_after_next("x")
    budget = (one + two) / 2
    config = make_config(privacy={**DP, "epsilon_max": budget}, aggregation={"k": 2},
                         selection={"retry_after_s": 1.0})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        a, b, c = [await devices(orch, name) for name in ("a", "b", "c")]
        assert isinstance(await _ask(a), Task)
        await _contribute(orch, a, b)  # a and b spend their budget on version 1

        for _ in range(3):
            answer = await _ask(a)
            assert isinstance(answer, Defer), answer
            assert answer.reason == "budget_exhausted"
            assert answer.retry_after_ms > 0
        assert isinstance(await _ask(c), Task)  # c has its whole budget left
        audits = await orch.store.list_audit(device="a")
        assert [e.reason for e in audits if e.event == "rejected"] == ["budget_exhausted"]
        assert orch.counters["deferred.budget_exhausted"] == 3


async def test_server_mode_noises_the_reduction_before_the_optimizer_steps(
    tmp_path: Any, broker: Any,
) -> None:
    config = parse_config(config_dict(
        tmp_path, broker, privacy={"mode": "server", "clip_norm": 1.0, "noise_multiplier": 2.0},
        aggregation={"k": 4, "server_lr": 1.0}), base_dir=tmp_path)
    strategy = strategy_from(config, optimizer_from(config), rng=np.random.default_rng(0))
    params = {"w": np.zeros(40_000, np.float32)}
    # 4 equal-weight updates of norm 3: the server clips them to 1 before averaging
    updates = [BufferedUpdate(i, f"d{i}", 0, 10, {"w": np.full(40_000, 3 / 200, np.float32)})
               for i in range(4)]

    result = strategy.aggregate(params, 0, updates)

    assert result.params is not None and result.delta is not None
    clipped_mean = 1 / 200  # each update is clipped to norm 1 = 200 * (1/200)
    noise = result.delta["w"] - clipped_mean
    # std = z * C / n = 2 * 1 / 4
    assert float(np.std(noise)) == pytest.approx(0.5, rel=0.03)
    assert float(np.mean(noise)) == pytest.approx(0.0, abs=0.02)
    # the optimizer stepped on the noised delta (plain SGD, lr 1)
    np.testing.assert_allclose(result.params["w"], result.delta["w"], rtol=1e-6)
    async with Store.open(":memory:") as store:
        runtime = PrivacyRuntime(config.privacy, store)
        assert runtime.task_noise(None, 0.0).noise_multiplier == 0.0  # devices only clip
        assert runtime.task_noise(None, 0.0).clip_norm == 1.0


@pytest.mark.parametrize(("sections", "message"), [
    ({"privacy": {"mode": "server"}, "aggregation": {"reducer": "median"}},
     "privacy.mode: 'server' needs"),
    ({"privacy": {"mode": "local"}, "training": {"noise_multiplier": 0.5}},
     "training.clip_norm: with privacy.mode set"),
    ({"privacy": {"mode": "on"}}, "privacy.mode: must be one of off, local, server"),
    ({"privacy": {"noise_multiplier": 0.0}}, "privacy.noise_multiplier: must be > 0"),
    ({"privacy": {"sampling": "fixed"}}, "privacy.sampling: must be one of none, poisson"),
    ({"privacy": {"target_delta": 1.0}}, "privacy.target_delta: must be in (0, 1)"),
    ({"robustness": {"max_flags": 0}}, "robustness.max_flags: must be > 0"),
])
def test_privacy_and_robustness_settings_are_validated(
    sections: dict[str, Any], message: str, tmp_path: Any, broker: Any,
) -> None:
    data = config_dict(tmp_path, broker, **sections)
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, base_dir=tmp_path)


def test_secure_defaults(make_config: Callable[..., Config]) -> None:
    config = make_config()
    assert config.training.seal
    assert not config.privacy.enabled
    assert not config.robustness.screening
