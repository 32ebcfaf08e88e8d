"""Isolation of repeat offenders: N flags within the window, and only within it."""

from __future__ import annotations

import pytest

from orchestrator.aggregation import IsolationPolicy, ScreeningStateError

MINUTE = 60_000


def test_isolated_after_n_flags_in_the_window() -> None:
    policy = IsolationPolicy(max_flags=3, window_ms=10 * MINUTE)
    assert policy.record_flag("dev", 0) is False
    assert policy.record_flag("dev", 4 * MINUTE) is False
    assert policy.record_flag("dev", 9 * MINUTE) is True
    assert policy.is_isolated("dev") and policy.isolated == {"dev"}
    # said once: later flags of an isolated device change nothing
    assert policy.record_flag("dev", 9 * MINUTE + 1) is False


def test_not_isolated_when_flags_are_spread_beyond_the_window() -> None:
    policy = IsolationPolicy(max_flags=3, window_ms=10 * MINUTE)
    for t in (0, 6 * MINUTE, 12 * MINUTE, 18 * MINUTE, 24 * MINUTE):
        assert policy.record_flag("dev", t) is False
    assert not policy.is_isolated("dev")
    assert policy.flags("dev") == (18 * MINUTE, 24 * MINUTE)
    assert policy.record_flag("dev", 27 * MINUTE) is True


def test_a_flag_exactly_window_old_no_longer_counts() -> None:
    policy = IsolationPolicy(max_flags=3, window_ms=10 * MINUTE)
    for t in (0, 5 * MINUTE, 10 * MINUTE):
        assert policy.record_flag("dev", t) is False
    assert policy.record_flag("dev", 14 * MINUTE) is True


def test_out_of_order_flags_and_devices_apart() -> None:
    policy = IsolationPolicy(max_flags=2, window_ms=MINUTE)
    assert policy.record_flag("a", 50_000) is False
    assert policy.record_flag("b", 40_000) is False  # another device's flag is its own
    assert policy.record_flag("a", 20_000) is True   # late, but within a minute of 50 s
    assert policy.isolated == {"a"}
    other = IsolationPolicy(max_flags=2, window_ms=MINUTE)
    other.record_flag("a", 100_000)
    assert other.record_flag("a", 30_000) is False   # arrived late and already outside
    assert other.flags("a") == (100_000,)


def test_reinstate_gives_a_clean_slate() -> None:
    policy = IsolationPolicy(max_flags=2, window_ms=MINUTE)
    policy.record_flag("dev", 0)
    assert policy.record_flag("dev", 1) is True
    policy.reinstate("dev")
    assert not policy.is_isolated("dev") and policy.flags("dev") == ()
    assert policy.record_flag("dev", 2) is False
    assert policy.record_flag("dev", 3) is True


def test_state_round_trip_and_prune() -> None:
    policy = IsolationPolicy(max_flags=3, window_ms=MINUTE)
    for dev, t in (("a", 1_000), ("a", 2_000), ("b", 5_000), ("c", 0), ("c", 1), ("c", 2)):
        policy.record_flag(dev, t)
    restored = IsolationPolicy(max_flags=3, window_ms=MINUTE)
    restored.load_state_dict(policy.state_dict())
    assert restored.isolated == {"c"}
    assert restored.flags("a") == (1_000, 2_000)
    assert restored.record_flag("a", 3_000) is True  # carries on where it stopped
    restored.prune(62_500)
    assert restored.flags("a") == (3_000,) and restored.flags("b") == (5_000,)
    restored.prune(120_000)
    assert restored.flags("a") == () and restored.flags("b") == ()
    assert restored.is_isolated("a")  # pruning forgets flags, never an isolation


@pytest.mark.parametrize("state", [b"", b"\xc1", b"\x81\xa4kind\xa8whatever"])
def test_bad_state_is_a_typed_error(state: bytes) -> None:
    with pytest.raises(ScreeningStateError):
        IsolationPolicy().load_state_dict(state)


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        IsolationPolicy(max_flags=0)
    with pytest.raises(ValueError):
        IsolationPolicy(window_ms=0)
