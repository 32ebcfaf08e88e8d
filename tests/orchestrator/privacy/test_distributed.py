"""``[privacy] mode = "distributed"``: secure-bucket members add the noise, the orchestrator adds
none and tasks carry none, and each version is charged as central DP exactly like ``server``
mode, in ledger rows of their own mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.aggregation.strategy import BufferedUpdate
from orchestrator.config import ConfigError, PrivacyConfig, parse_config
from orchestrator.privacy import DP_MODES, DpPolicy, PrivacyError, bucket_noise_std
from orchestrator.privacy.runtime import PrivacyRuntime
from orchestrator.store import DP_LEDGER_MODES, PrivacyRecord, Store
from orchestrator.versions.strategies import optimizer_from, strategy_from

MINIMAL: dict[str, Any] = {"federation": {"id": "fed"},
                           "model": {"kind": "softmax", "n_features": 4, "n_classes": 3}}
DISTRIBUTED = PrivacyConfig(mode="distributed", clip_norm=0.5, noise_multiplier=1.3)


def test_the_config_and_the_policy_take_distributed(tmp_path: Path) -> None:
    secure = {"enabled": True, "bucket_size": 4}
    loaded = parse_config({**MINIMAL, "privacy": {"mode": "distributed", "clip_norm": 0.5},
                           "secure_aggregation": secure}, base_dir=tmp_path)
    assert loaded.privacy.mode == "distributed" and loaded.privacy.enabled
    with pytest.raises(ConfigError, match=r"needs secure_aggregation\.enabled"):
        parse_config({**MINIMAL, "privacy": {"mode": "distributed"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="concurrency"):
        parse_config({**MINIMAL, "secure_aggregation": {"enabled": True, "bucket_size": 500}},
                     base_dir=tmp_path)
    policy = DpPolicy(mode="distributed", clip_norm=0.5, noise_multiplier=1.3)
    assert DpPolicy.from_bytes(policy.to_bytes()) == policy
    assert DP_LEDGER_MODES == DP_MODES  # every mode's charges have rows in the store


@pytest.mark.parametrize("mode", ["off", "distributed"])
def test_the_orchestrator_adds_no_noise(mode: str, tmp_path: Path) -> None:
    """The aggregate is bit for bit the one DP off gives: no ServerNoise layer, no draw."""
    def aggregate(privacy_mode: str) -> np.ndarray:
        config = parse_config({**MINIMAL, "privacy": {"mode": privacy_mode},
                               "aggregation": {"k": 3},
                               "secure_aggregation": {"enabled": privacy_mode != "off",
                                                      "bucket_size": 4}},
                              base_dir=tmp_path)
        strategy = strategy_from(config, optimizer_from(config), rng=np.random.default_rng(0))
        params = {"w": np.zeros(64, np.float32)}
        updates = [BufferedUpdate(i, f"d{i}", 0, 10, {"w": np.full(64, 0.1 * i, np.float32)})
                   for i in range(3)]
        result = strategy.aggregate(params, 0, updates)
        assert result.delta is not None
        return result.delta["w"]

    np.testing.assert_array_equal(aggregate(mode), aggregate("off"))
    assert not np.array_equal(aggregate("server"), aggregate("off"))  # the control


async def test_tasks_carry_no_noise_and_the_buckets_get_the_central_multiplier() -> None:
    async with Store.open(":memory:") as store:
        runtime = PrivacyRuntime(DISTRIBUTED, store)
        assert runtime.mode == "distributed"
        assert runtime.task_noise(None, 0.0) == runtime.task_noise(2.0, 0.7)
        assert (runtime.task_noise(None, 0.0).clip_norm,
                runtime.task_noise(None, 0.0).noise_multiplier) == (0.5, 0.0)
        assert (runtime.central_noise_multiplier, runtime.clip_norm) == (1.3, 0.5)
        for mode in ("off", "local", "server"):
            other = PrivacyRuntime(PrivacyConfig(mode=mode), store)
            assert other.central_noise_multiplier == 0.0
        off = PrivacyRuntime(PrivacyConfig(), store)
        assert (off.mode, off.clip_norm) == (None, None)


async def test_a_version_is_charged_like_server_mode_in_rows_of_its_own() -> None:
    members = ["a", "b", "c", "a"]  # a was in two of the version's buckets
    async with Store.open(":memory:", clock=lambda: 9) as store:
        arch = await store.put_architecture(b"arch")
        await store.commit_version(params={"w": np.zeros(2, np.float32)}, kind="initial",
                                   parent=None, arch_hash=arch)
        distributed = PrivacyRuntime(DISTRIBUTED, store)
        server = PrivacyRuntime(PrivacyConfig(mode="server", clip_norm=0.5,
                                              noise_multiplier=1.3), store)
        for runtime in (distributed, server):
            await runtime.load()
        plan = distributed.plan(members, population=10)
        control = server.plan(members, population=10)
        assert plan is not None and control is not None
        assert plan.accountant.steps == control.accountant.steps
        assert plan.accountant.epsilon() == control.accountant.epsilon()
        info = await store.commit_version(params={"w": np.ones(2, np.float32)},
                                          kind="aggregate", parent=0, privacy=plan.charges,
                                          server_state=plan.server_state)
        await distributed.committed(plan, info.version)
        assert await store.privacy_ledger() == [
            PrivacyRecord("a", 1, 1.3, 0.5, "distributed", 2, 9),
            PrivacyRecord("b", 1, 1.3, 0.5, "distributed", 1, 9),
            PrivacyRecord("c", 1, 1.3, 0.5, "distributed", 1, 9),
        ]
        assert distributed.spent("a") > distributed.spent("b") > 0


@settings(max_examples=50, deadline=None)
@given(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), st.floats(0, 1e2))
def test_the_bucket_noise_is_z_times_the_sums_sensitivity(c: float, w: float, z: float) -> None:
    std = bucket_noise_std(clip_norm=c, weight_cap=w, noise_multiplier=z)
    assert std == pytest.approx(z * c * w)
    assert bucket_noise_std(clip_norm=c, weight_cap=2 * w, noise_multiplier=z) == \
        pytest.approx(2 * std)


@pytest.mark.parametrize("bad", [dict(clip_norm=0.0), dict(weight_cap=-1.0),
                                 dict(noise_multiplier=float("nan")),
                                 dict(weight_cap=float("inf"))])
def test_bucket_noise_refuses_bad_inputs(bad: dict[str, float]) -> None:
    with pytest.raises(PrivacyError):
        bucket_noise_std(**({"clip_norm": 1.0, "weight_cap": 1.0, "noise_multiplier": 1.0}
                            | bad))
