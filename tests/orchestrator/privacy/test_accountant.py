"""The federation accountant and the per-device ledger, against dp-accounting computed here
directly (the library's own calculation, not ours)."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from orchestrator.privacy import (
    AccountantStep,
    DeviceLedger,
    DpPolicy,
    FederationAccountant,
    PrivacyError,
    PrivacyStateError,
    sampling_rate,
)

DELTA = 1e-5


def _direct(kind: str, q: float, z: float, steps: int) -> float:
    """dp-accounting alone: ``steps`` Poisson-sampled Gaussian mechanisms (q = 1: plain
    Gaussian mechanisms)."""
    accountant = RdpAccountant() if kind == "rdp" else PLDAccountant()
    one: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        one = dp_accounting.PoissonSampledDpEvent(q, one)
    accountant.compose(dp_accounting.SelfComposedDpEvent(one, steps))
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.parametrize(("kind", "z", "participants", "population", "versions"), [
    ("rdp", 1.0, 5, 20, 30),
    ("rdp", 1.3, 10, 20, 12),
    ("pld", 1.0, 5, 20, 30),
])
def test_poisson_epsilon_matches_dp_accounting(
    kind: str, z: float, participants: int, population: int, versions: int
) -> None:
    acc = FederationAccountant(z, DELTA, kind, sampling="poisson")  # type: ignore[arg-type]
    for _ in range(versions):
        acc.record_version(participants, population)
    expected = _direct(kind, participants / population, z, versions)
    assert acc.epsilon() == pytest.approx(expected, rel=1e-9)
    assert acc.versions == versions
    # identical consecutive versions are one compressed step
    assert acc.steps == (AccountantStep(participants / population, z, versions),)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_epsilon_grows_with_every_version(kind: str) -> None:
    acc = FederationAccountant(1.0, DELTA, kind)  # type: ignore[arg-type]
    assert acc.epsilon() == 0.0
    seen = []
    for _ in range(3):
        acc.record_version(4, 20)
        seen.append(acc.epsilon())
    assert all(a < b for a, b in itertools.pairwise(seen))
    assert seen[0] > 0


def test_mixed_steps_compose_like_the_library() -> None:
    acc = FederationAccountant(1.1, DELTA, sampling="poisson")
    plan = [(5, 20)] * 3 + [(6, 20)] * 2 + [(5, 20)] * 4
    for p, n in plan:
        acc.record_version(p, n)
    assert [s.count for s in acc.steps] == [3, 2, 4]
    direct = RdpAccountant()
    for p, n in plan:
        direct.compose(dp_accounting.PoissonSampledDpEvent(
            p / n, dp_accounting.GaussianDpEvent(1.1)))
    assert acc.epsilon() == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    # and the composed event it exposes is what the library accounts
    assert RdpAccountant().compose(acc.dp_event()).get_epsilon(DELTA) == pytest.approx(
        acc.epsilon(), rel=1e-9)


@pytest.mark.parametrize(("kind", "sampling"), [("rdp", "none"), ("rdp", "poisson"),
                                                ("pld", "none"), ("pld", "poisson")])
def test_state_round_trip_gives_the_same_epsilon(kind: str, sampling: str) -> None:
    acc = FederationAccountant(1.0, DELTA, kind, sampling=sampling)  # type: ignore[arg-type]
    for p in (3, 3, 7, 3):
        acc.record_version(p, 17)
    if kind == "rdp":  # (PLD takes a second per distinct step: keep it to two)
        acc.record_version(9, 17, noise_multiplier=2.0, max_contributions=2)
    restored = FederationAccountant.from_state(acc.state_dict())
    assert restored.steps == acc.steps
    assert restored.kind == kind and restored.target_delta == DELTA
    assert restored.sampling == sampling
    assert restored.noise_multiplier == 1.0
    assert restored.epsilon() == acc.epsilon()
    restored.record_version(3, 17)
    assert restored.epsilon() > acc.epsilon()


@pytest.mark.parametrize(("sampling", "q"), [("poisson", 0.2), ("none", 1.0)])
def test_extra_contributions_reduce_the_effective_noise(sampling: str, q: float) -> None:
    acc = FederationAccountant(1.0, DELTA, sampling=sampling)  # type: ignore[arg-type]
    step = acc.record_version(4, 20, max_contributions=2)
    assert step == AccountantStep(0.2, 0.5, 1)
    assert acc.epsilon() == pytest.approx(_direct("rdp", q, 0.5, 1), rel=1e-9)


def test_sampling_rate_and_bad_inputs() -> None:
    assert sampling_rate(3, 12) == 0.25
    assert sampling_rate(12, 10) == 1.0  # devices left since: capped
    acc = FederationAccountant(1.0, DELTA)
    for bad in ((0, 10), (3, 0), (True, 10)):
        with pytest.raises(PrivacyError):
            acc.record_version(*bad)
    with pytest.raises(PrivacyError, match="max_contributions"):
        acc.record_version(3, 10, max_contributions=0)
    with pytest.raises(PrivacyError, match="target_delta"):
        FederationAccountant(1.0, 0.0)
    with pytest.raises(PrivacyError, match="accountant"):
        FederationAccountant(1.0, DELTA, "moments")  # type: ignore[arg-type]
    assert acc.versions == 0


def test_no_noise_means_unbounded_epsilon() -> None:
    acc = FederationAccountant(0.0, DELTA)
    acc.record_version(5, 10)
    assert acc.epsilon() == math.inf


@pytest.mark.parametrize("state", [
    b"not json", b"[]", b'{"kind": "dp_policy", "v": 1}',
    b'{"kind": "federation_accountant", "v": 2}',
    b'{"kind": "federation_accountant", "v": 1, "accountant": "rdp", "noise_multiplier": 1,'
    b' "target_delta": 1e-5, "steps": [[1.5, 1.0, 1]]}',
    b'{"kind": "federation_accountant", "v": 1, "accountant": "rdp", "noise_multiplier": 1,'
    b' "target_delta": 1e-5}',
])
def test_bad_saved_state_is_a_typed_error(state: bytes) -> None:
    with pytest.raises(PrivacyStateError):
        FederationAccountant.from_state(state)


# -- per-device ledger -------------------------------------------------------------------------


def test_device_epsilon_matches_dp_accounting_without_sampling() -> None:
    ledger = DeviceLedger(1.0, DELTA, accountant="rdp")
    for _ in range(7):
        ledger.record("dev-a", 1.0)
    direct = RdpAccountant().compose(dp_accounting.GaussianDpEvent(1.0), 7)
    assert ledger.epsilon("dev-a") == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    assert ledger.participations("dev-a") == 7
    assert ledger.epsilon("never") == 0.0


def test_device_epsilon_pld_is_the_exact_composed_gaussian() -> None:
    ledger = DeviceLedger(1.0, DELTA, accountant="pld")
    for _ in range(5):
        ledger.record("dev-a", 2.0)
    ledger.record("dev-a", 2.0, contributions=2)  # two updates in one version: z/2
    pld = PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(2.0), 5)
    pld.compose(dp_accounting.GaussianDpEvent(1.0))
    assert ledger.epsilon("dev-a") == pytest.approx(pld.get_epsilon(DELTA), rel=1e-3)


def test_budget_is_never_exceeded() -> None:
    policy = DpPolicy(mode="server", clip_norm=1.0, noise_multiplier=1.0, epsilon_max=8.0)
    ledger = DeviceLedger.for_policy(policy)
    rounds = 0
    while ledger.budget_left("dev-a"):
        ledger.record("dev-a", policy.noise_multiplier)
        rounds += 1
        assert ledger.epsilon("dev-a") <= 8.0
    assert rounds > 1
    # one more would have crossed it
    assert ledger.epsilon_after_next("dev-a") > 8.0
    spend = ledger.spend("dev-a")
    assert (spend.participations, spend.budget, spend.budget_left) == (rounds, 8.0, False)
    assert ledger.exhausted() == ["dev-a"]
    ledger.record("dev-b", 1.0)
    assert ledger.budget_left("dev-b") and ledger.exhausted() == ["dev-a"]


def test_without_a_budget_every_device_has_budget_left() -> None:
    ledger = DeviceLedger(0.5, DELTA)
    for _ in range(50):
        ledger.record("dev-a", 0.5)
    assert ledger.budget_left("dev-a")
    assert ledger.spend("dev-a").budget is None


def test_policy_round_trip_and_validation() -> None:
    policy = DpPolicy(mode="local", clip_norm=1.0, noise_multiplier=1.0, target_delta=1e-6,
                      epsilon_max=4.0, accountant="pld")
    assert DpPolicy.from_bytes(policy.to_bytes()) == policy
    for bad in (dict(mode="device"), dict(noise_multiplier=0.0), dict(clip_norm=-1.0),
                dict(target_delta=1.0), dict(epsilon_max=0.0), dict(accountant="x")):
        fields = dict(mode="server", clip_norm=1.0, noise_multiplier=1.0) | bad
        with pytest.raises(PrivacyError):
            DpPolicy(**fields)  # type: ignore[arg-type]
    with pytest.raises(PrivacyStateError):
        DpPolicy.from_bytes(b'{"kind": "dp_policy", "v": 1, "mode": "local"}')
