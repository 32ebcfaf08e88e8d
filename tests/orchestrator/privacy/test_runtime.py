"""The service's DP state (:class:`PrivacyRuntime`) on an in-memory store: the configured
sampling reaches the policy, the accountant and each version's plan, and a saved history is
re-accounted under it."""

from __future__ import annotations

import pytest

from orchestrator.config import PrivacyConfig
from orchestrator.privacy import AccountantStep, FederationAccountant
from orchestrator.privacy.runtime import PrivacyRuntime
from orchestrator.store import Store
from orchestrator.store.state_keys import StateKey

DELTA = 1e-5


@pytest.mark.parametrize("sampling", ["none", "poisson"])
async def test_the_configured_sampling_accounts_each_version(sampling: str) -> None:
    config = PrivacyConfig(mode="server", sampling=sampling)  # type: ignore[arg-type]
    async with Store.open(":memory:") as store:
        runtime = PrivacyRuntime(config, store)
        await runtime.load()
        assert runtime.policy is not None and runtime.policy.sampling == sampling
        plan = runtime.plan(["d0", "d1", "d0"], population=8)
        assert plan is not None
        assert plan.accountant.sampling == sampling
        assert plan.accountant.steps == (AccountantStep(0.25, 0.5),)
        steps = plan.accountant.steps
        expected = FederationAccountant(1.0, DELTA, steps=steps, sampling=plan.accountant.sampling)
        assert plan.accountant.epsilon() == expected.epsilon()
        saved = FederationAccountant.from_state(plan.server_state[StateKey.ACCOUNTANT])
        assert saved.sampling == sampling


async def test_a_saved_poisson_history_is_reaccounted_under_the_setting() -> None:
    legacy = FederationAccountant(1.0, DELTA, sampling="poisson")
    for _ in range(4):
        legacy.record_version(2, 10)
    async with Store.open(":memory:") as store:
        await store.put_server_state({StateKey.ACCOUNTANT: legacy.state_dict()})
        runtime = PrivacyRuntime(PrivacyConfig(mode="local"), store)
        await runtime.load()
        honest = FederationAccountant(1.0, DELTA, steps=legacy.steps)
        assert runtime.epsilon == pytest.approx(honest.epsilon(), rel=1e-12)
        assert runtime.epsilon is not None and runtime.epsilon > legacy.epsilon()
