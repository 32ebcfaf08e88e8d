"""The screening runtime's pure parts: the start-up consensus direction and saved state."""

from __future__ import annotations

import numpy as np

from orchestrator.aggregation import BufferedUpdate, cosine
from orchestrator.config import RobustnessConfig
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.guard import RobustGuard, consensus_direction


def _honest(rng: np.random.Generator, common: np.ndarray) -> dict[str, np.ndarray]:
    """Non-IID-like: a shared direction plus a large per-device part."""
    v = common + rng.standard_normal(common.shape) * 1.2
    return {"w": v[:40].reshape(8, 5), "b": v[40:]}


def test_the_consensus_follows_an_honest_majority_of_senders() -> None:
    rng = np.random.default_rng(0)
    common = rng.standard_normal(45)
    honest = [(f"h{i}", _honest(rng, common)) for i in range(6)]
    # four attackers, one of them sending twice: still one vote per sender
    attackers = [(f"a{i % 4}", {k: -10 * v for k, v in _honest(rng, common).items()})
                 for i in range(5)]
    reference = {"w": common[:40].reshape(8, 5), "b": common[40:]}

    direction = consensus_direction(honest + attackers)

    assert direction is not None
    assert set(direction) == {"w", "b"} and direction["w"].shape == (8, 5)
    assert cosine(direction, reference) > 0.5
    # the batch's coordinate-wise median, the screen's own fallback, is pulled away
    median = {k: np.median([d[k] for _, d in honest + attackers], axis=0) for k in reference}
    assert cosine(median, reference) < cosine(direction, reference)


def test_no_consensus_from_fewer_than_three_senders_or_mixed_models() -> None:
    one = {"w": np.ones((2, 2))}
    assert consensus_direction([("a", one), ("a", one), ("b", one)]) is None
    assert consensus_direction([("a", one), ("b", one), ("c", {"v": np.ones(3)})]) is None
    assert consensus_direction([("a", one), ("b", one), ("c", {"w": np.zeros((2, 2))})]) is None
    assert consensus_direction([]) is None


def test_state_round_trips_and_the_store_wins_over_saved_isolation() -> None:
    guard = RobustGuard(RobustnessConfig(screening=True, max_flags=1))
    assert guard.isolation.record_flag("x", 1_000)
    guard.observe({"w": np.ones(3)})
    state = guard.state()
    assert set(state) == {StateKey.SCREEN, StateKey.ISOLATION}

    restored = RobustGuard(RobustnessConfig(screening=True, max_flags=1))
    restored.load_state(state, isolated={"x"})
    assert restored.isolation.is_isolated("x")
    reinstated = RobustGuard(RobustnessConfig(screening=True, max_flags=1))
    reinstated.load_state(state, isolated=set())  # an operator reinstated it meanwhile
    assert not reinstated.isolation.is_isolated("x")
    # a damaged state is ignored, not fatal
    RobustGuard(RobustnessConfig(screening=True)).load_state(
        {StateKey.SCREEN: b"\x00junk"}, isolated=set())


def test_screening_off_keeps_everything_and_saves_nothing() -> None:
    guard = RobustGuard(RobustnessConfig())
    assert not guard.enabled and guard.state() == {}
    update = BufferedUpdate(1, "a", 0, 1, {"w": np.full(3, np.nan, np.float32)})
    guard.observe(update.delta)  # a no-op when off
    assert guard.state() == {}
