"""Per-sender token buckets, refusal coalescing and flood detection, on a fake clock."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.config import LimitsConfig
from orchestrator.link.rates import Lane, RateLimiter, TokenBucket
from tests.support.clock import FakeClock

LIMITS = LimitsConfig(updates_per_s=2.0, updates_burst=4, control_per_s=5.0, control_burst=5,
                      ops_per_s=1.0, ops_burst=1, bytes_per_s=1000, bytes_burst=4000,
                      flood_after_s=3.0, max_senders=3)


def _step(clock: FakeClock, seconds: float) -> None:
    asyncio.run(clock.advance(seconds))


def test_a_burst_is_admitted_then_the_rate_holds() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LIMITS, clock)
    assert [limiter.admit("dev-a", Lane.UPDATES, 10) for _ in range(5)] == [True] * 4 + [False]
    _step(clock, 0.5)  # one token back at 2/s
    assert limiter.admit("dev-a", Lane.UPDATES, 10)
    assert not limiter.admit("dev-a", Lane.UPDATES, 10)
    # lanes and senders are separate buckets
    assert limiter.admit("dev-a", Lane.CONTROL, 10)
    assert limiter.admit("dev-b", Lane.UPDATES, 10)


def test_bytes_are_limited_across_lanes_and_a_refusal_for_bytes_keeps_the_slot() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LIMITS, clock)
    assert limiter.admit("dev-a", Lane.UPDATES, 3000)
    assert not limiter.admit("dev-a", Lane.CONTROL, 2000)  # 1000 bytes left
    assert limiter.admit("dev-a", Lane.CONTROL, 1000)
    _step(clock, 2.0)
    assert limiter.admit("dev-a", Lane.UPDATES, 2000)
    assert [r.lane for r in limiter.take_refusals()] == [Lane.CONTROL]


def test_refusals_are_coalesced_per_sender_and_lane() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LIMITS, clock)
    first = clock.wall_ms()
    for _ in range(10):
        limiter.admit("dev-a", Lane.OPS, 7)
    _step(clock, 0.25)
    limiter.admit("dev-a", Lane.OPS, 7)
    (record,) = limiter.take_refusals()
    assert (record.sender, record.lane, record.count, record.bytes) == ("dev-a", Lane.OPS, 10, 70)
    assert (record.first_ms, record.last_ms) == (first, first + 250)
    assert limiter.take_refusals() == []


def test_a_sustained_flood_is_reported_once_and_a_pause_resets_the_streak() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LIMITS, clock)
    for _ in range(28):  # refused every 0.1 s for 2.8 s: not yet
        for _ in range(5):
            limiter.admit("dev-a", Lane.UPDATES, 1)
        _step(clock, 0.1)
    assert limiter.take_floods() == []
    _step(clock, 1.5)  # a pause longer than 1 s: the streak starts again
    for _ in range(20):
        for _ in range(5):
            limiter.admit("dev-a", Lane.UPDATES, 1)
        _step(clock, 0.1)
    assert limiter.take_floods() == []
    for _ in range(15):
        for _ in range(5):
            limiter.admit("dev-a", Lane.UPDATES, 1)
        _step(clock, 0.1)
    (flood,) = limiter.take_floods()
    assert flood.sender == "dev-a" and flood.lane is Lane.UPDATES and flood.refused > 100
    for _ in range(5):
        limiter.admit("dev-a", Lane.UPDATES, 1)
    assert limiter.take_floods() == []  # once per flood


def test_an_honest_rate_is_never_refused() -> None:
    clock = FakeClock()
    limiter = RateLimiter(LimitsConfig(), clock)
    for _ in range(600):  # a status every 10 s and an update batch every 30 s, for 100 min
        assert limiter.admit("dev-a", Lane.CONTROL, 300)
        _step(clock, 10)
    assert limiter.take_refusals() == []


def test_senders_beyond_the_cap_are_forgotten_least_recent_first() -> None:
    clock = FakeClock()
    limiter = RateLimiter(replace(LIMITS, updates_burst=1), clock)
    for name in ("a", "b", "c"):
        assert limiter.admit(name, Lane.UPDATES, 1)
    assert not limiter.admit("a", Lane.UPDATES, 1)  # a is now the most recent
    assert limiter.admit("d", Lane.UPDATES, 1)  # forgets b
    assert limiter.admit("b", Lane.UPDATES, 1)  # b is new again; forgets c
    assert not limiter.admit("a", Lane.UPDATES, 1)  # a was kept
    limiter.reinstate("a")
    assert limiter.admit("a", Lane.UPDATES, 1)


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 3)), max_size=60))
def test_a_bucket_never_exceeds_its_rate(steps: list[tuple[float, float]]) -> None:
    """Over any sequence, what was taken is at most the burst plus rate times elapsed."""
    bucket, now, taken = TokenBucket(2.0, 5.0, 0.0), 0.0, 0.0
    for dt, cost in steps:
        now += dt
        if bucket.take(now, cost):
            taken += cost
        assert 0 <= bucket.tokens <= 5.0
    assert taken <= 5.0 + 2.0 * now + 1e-9


def test_a_burst_of_refusals_is_a_flood_however_short_and_drops_count() -> None:
    clock = FakeClock()
    limiter = RateLimiter(replace(LIMITS, flood_after_refused=300), clock)
    for _ in range(200):
        limiter.admit("dev-a", Lane.CONTROL, 1)
    for _ in range(100):  # dropped by the link before their turn: refusals too
        limiter.refuse("dev-a", Lane.CONTROL, 1)
    assert limiter.take_floods() == []  # 195 + 100 refused (the first 5 were the burst)
    for _ in range(5):
        limiter.admit("dev-a", Lane.CONTROL, 1)
    (flood,) = limiter.take_floods()
    assert flood.refused == 300
    (record,) = limiter.take_refusals()
    assert record.count == flood.refused
