"""``[privacy] sampling``: ``none`` accounts each version without amplification by subsampling
(q = 1), ``poisson`` at the observed rate; saved states from before the setting load as the
``poisson`` they were accounted with. Checked against dp-accounting called here directly."""

from __future__ import annotations

import json
from collections import Counter

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.privacy import (
    AccountantStep,
    DeviceLedger,
    DpPolicy,
    FederationAccountant,
    PrivacyError,
    PrivacyStateError,
)

DELTA = 1e-5

# one version: (distinct participants, population, most updates by one device)
versions = st.lists(
    st.tuples(st.integers(1, 20), st.integers(1, 40), st.integers(1, 3)), min_size=1,
    max_size=12)


def _gaussians(z_per_version: list[float]) -> float:
    """dp-accounting alone: plain Gaussian mechanisms, composed."""
    impl = RdpAccountant()
    for z in z_per_version:
        impl.compose(dp_accounting.GaussianDpEvent(z))
    return float(impl.get_epsilon(DELTA))


def test_the_default_is_no_amplification() -> None:
    policy = DpPolicy(mode="server", clip_norm=1.0, noise_multiplier=1.0)
    assert policy.sampling == "none"
    acc = FederationAccountant.for_policy(policy)
    assert (acc.sampling, acc.amplification) == ("none", False)
    assert FederationAccountant(1.0, DELTA).sampling == "none"
    poisson = FederationAccountant.for_policy(DpPolicy("server", 1.0, 1.0, sampling="poisson"))
    assert (poisson.sampling, poisson.amplification) == ("poisson", True)


@settings(max_examples=30, deadline=None)
@given(versions)
def test_none_charges_every_version_as_a_gaussian_whatever_the_rate(
    plan: list[tuple[int, int, int]],
) -> None:
    acc = FederationAccountant(1.0, DELTA)
    for participants, population, m in plan:
        acc.record_version(participants, population, max_contributions=m)
    assert acc.epsilon() == pytest.approx(_gaussians([1.0 / m for _, _, m in plan]), rel=1e-9)
    # the observed rates are kept, for a comparison under the other assumption
    assert [s.sampling_rate for s in acc.steps for _ in range(s.count)] == [
        min(1.0, p / n) for p, n, _ in plan]


@settings(max_examples=30, deadline=None)
@given(versions)
def test_poisson_never_reports_more_than_none(plan: list[tuple[int, int, int]]) -> None:
    honest = FederationAccountant(1.0, DELTA)
    for participants, population, m in plan:
        honest.record_version(participants, population, max_contributions=m)
    assumed = FederationAccountant(1.0, DELTA, sampling="poisson", steps=honest.steps)
    assert assumed.epsilon() <= honest.epsilon() * (1 + 1e-9)
    # and each figure is what the event it exposes accounts
    for acc in (honest, assumed):
        direct = RdpAccountant().compose(acc.dp_event()).get_epsilon(DELTA)
        assert acc.epsilon() == pytest.approx(direct, rel=1e-9)


def test_a_full_rate_is_the_same_under_both() -> None:
    step = AccountantStep(1.0, 1.0, 5)
    none = FederationAccountant(1.0, DELTA, steps=[step])
    poisson = FederationAccountant(1.0, DELTA, steps=[step], sampling="poisson")
    assert none.epsilon() == pytest.approx(poisson.epsilon(), rel=1e-9)
    assert step.accounted_rate("none") == step.accounted_rate("poisson") == 1.0
    assert AccountantStep(0.25, 1.0).accounted_rate("none") == 1.0


# what FederationAccountant.state_dict wrote before the sampling setting existed
LEGACY_STATE = json.dumps({
    "kind": "federation_accountant", "v": 1, "accountant": "rdp", "noise_multiplier": 1.0,
    "target_delta": DELTA, "steps": [[0.5, 1.0, 3], [0.25, 0.5, 2]]}, sort_keys=True).encode()


def test_a_legacy_state_loads_as_the_poisson_it_was_accounted_with() -> None:
    acc = FederationAccountant.from_state(LEGACY_STATE)
    assert acc.sampling == "poisson" and acc.amplification
    assert acc.steps == (AccountantStep(0.5, 1.0, 3), AccountantStep(0.25, 0.5, 2))
    direct = RdpAccountant()
    direct.compose(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.0)),
                   3)
    direct.compose(dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(0.5)),
                   2)
    assert acc.epsilon() == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    # the runtime re-accounts the kept steps under the configured setting
    honest = FederationAccountant(1.0, DELTA, steps=acc.steps, sampling="none")
    assert honest.epsilon() == pytest.approx(_gaussians([1.0] * 3 + [0.5] * 2), rel=1e-9)
    assert honest.epsilon() > acc.epsilon()
    # saved again, the setting is written down
    assert json.loads(honest.state_dict())["sampling"] == "none"
    assert FederationAccountant.from_state(honest.state_dict()).sampling == "none"


def test_a_legacy_policy_loads_as_poisson_and_bad_settings_are_refused() -> None:
    raw = json.loads(DpPolicy("local", 1.0, 1.0).to_bytes())
    assert raw["sampling"] == "none"
    del raw["sampling"]
    legacy = DpPolicy.from_bytes(json.dumps(raw).encode())
    assert legacy.sampling == "poisson"
    with pytest.raises(PrivacyError, match="sampling must be one of"):
        DpPolicy("local", 1.0, 1.0, sampling="fixed")  # type: ignore[arg-type]
    with pytest.raises(PrivacyError, match="sampling"):
        FederationAccountant(1.0, DELTA, sampling="uniform")  # type: ignore[arg-type]
    with pytest.raises(PrivacyStateError):
        FederationAccountant.from_state(LEGACY_STATE.replace(b'"v": 1', b'"sampling": "x", "v": 1'))
    with pytest.raises(PrivacyStateError):
        DpPolicy.from_bytes(json.dumps({**raw, "sampling": "x"}).encode())


# one version: which devices put how many updates into it
histories = st.lists(
    st.dictionaries(st.sampled_from("abcde"), st.integers(1, 3), min_size=1), min_size=1,
    max_size=8)


@settings(max_examples=25, deadline=None)
@given(histories, st.sampled_from([0.7, 1.0, 2.0]))
def test_without_amplification_no_device_exceeds_the_federation(
    history: list[dict[str, int]], z: float,
) -> None:
    """The device ledger never amplifies (a device's own participation is no secret from it):
    under ``none`` both rest on one assumption, so no device can be shown to have spent more
    than the federation's epsilon."""
    acc = FederationAccountant(z, DELTA)
    ledger = DeviceLedger(z, DELTA)
    for counts in history:
        acc.record_version(len(counts), 5, max_contributions=max(counts.values()))
        for device, k in Counter(counts).items():
            ledger.record(device, z, contributions=k)
    for device in ledger.devices():
        assert ledger.epsilon(device) <= acc.epsilon() * (1 + 1e-9)
