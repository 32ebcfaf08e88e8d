"""Reconnect backoff: exponential, fully jittered, capped — with the sleep injected."""

from __future__ import annotations

import asyncio
import random

import pytest

from edge_agent.backoff import Backoff
from edge_agent.session import BrokerAddress, Session
from orchestrator.broker import MosquittoBroker, pick_free_port


class RecordingSleep:
    """Returns at once and remembers every delay; fires ``enough`` after ``limit`` calls."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.enough = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self.limit:
            self.enough.set()
        await asyncio.sleep(0)


async def test_delays_grow_exponentially_within_jitter_bounds_and_are_capped() -> None:
    sleep = RecordingSleep()
    backoff = Backoff(0.5, 8.0, rng=random.Random(1), sleep=sleep)
    for _ in range(12):
        await backoff.wait()
    ceilings = [min(8.0, 0.5 * 2**n) for n in range(12)]
    assert all(0 <= d <= c for d, c in zip(sleep.delays, ceilings, strict=True))
    assert max(sleep.delays) <= 8.0
    assert max(sleep.delays[6:]) > 4.0  # the cap is reached, not just respected


def test_full_jitter_spreads_over_the_whole_window() -> None:
    backoff = Backoff(1.0, 100.0, rng=random.Random(2))
    samples = []
    for _ in range(2000):
        backoff.attempt = 3
        samples.append(backoff.next_delay())
    assert min(samples) < 0.4 and max(samples) > 7.6  # uniform on [0, 8]
    assert sum(samples) / len(samples) == pytest.approx(4.0, rel=0.05)


def test_reset_starts_over_and_huge_attempts_stay_finite() -> None:
    backoff = Backoff(0.1, 5.0, rng=random.Random(3))
    backoff.attempt = 10_000
    assert 0 <= backoff.next_delay() <= 5.0
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay() <= 0.1


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_bad_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)


async def test_session_retries_an_unreachable_broker_with_backoff() -> None:
    sleep = RecordingSleep(limit=6)
    backoff = Backoff(0.25, 2.0, rng=random.Random(4), sleep=sleep)
    wills = 0

    async def will() -> bytes:
        nonlocal wills
        wills += 1
        return b"offline"

    async def ignore(topic: str, payload: bytes) -> None:
        raise AssertionError("nothing can arrive")

    port = pick_free_port()  # nothing listens there
    session = Session(BrokerAddress("127.0.0.1", port, "u", "p", "c"), subscriptions=["a/#"],
                      on_message=ignore, will_topic="w", will=will, backoff=backoff)
    runner = asyncio.create_task(session.run())
    async with asyncio.timeout(10):
        await sleep.enough.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert not session.connected and session.connections == 0
    assert "refused" in session.last_error.lower()
    assert all(d <= min(2.0, 0.25 * 2**n) for n, d in enumerate(sleep.delays))
    assert wills == 1  # the Last Will is signed once until a connection actually uses it


async def test_session_keeps_retrying_when_the_broker_refuses_its_credentials(
    broker: MosquittoBroker,
) -> None:
    sleep = RecordingSleep(limit=3)

    async def ignore(topic: str, payload: bytes) -> None:
        raise AssertionError("nothing can arrive")

    address = BrokerAddress(broker.host, broker.port, "nobody", "wrong", "c-refused")
    session = Session(address, subscriptions=["a/#"], on_message=ignore,
                      backoff=Backoff(0.1, 1.0, rng=random.Random(5), sleep=sleep))
    runner = asyncio.create_task(session.run())
    async with asyncio.timeout(10):
        await sleep.enough.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert session.connections == 0
    assert "not authorized" in session.last_error.lower() or "bad user" in \
        session.last_error.lower(), session.last_error


async def test_repeated_not_authorized_refusals_hold_back_to_the_long_interval(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture,
) -> None:
    """Three refusals as not authorized in a row, then only about every ``auth_retry_s``
    (jittered in its upper half), with one error line — not a retry at full speed forever."""
    sleep = RecordingSleep(limit=6)

    async def ignore(topic: str, payload: bytes) -> None:
        raise AssertionError("nothing can arrive")

    address = BrokerAddress(broker.host, broker.port, "nobody", "wrong", "c-held")
    session = Session(address, subscriptions=["a/#"], on_message=ignore, auth_retry_s=600.0,
                      backoff=Backoff(0.1, 1.0, rng=random.Random(5), sleep=sleep))
    runner = asyncio.create_task(session.run())
    async with asyncio.timeout(20):
        await sleep.enough.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert session.refused_credentials and session.auth_refusals >= 6
    assert all(d <= 1.0 for d in sleep.delays[:2])
    assert all(300.0 <= d <= 600.0 for d in sleep.delays[2:6])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "refused this device's credentials 3 times" in errors[0]
    assert "revoked" in errors[0]


def test_only_credential_refusals_count_as_not_authorized() -> None:
    from aiomqtt.exceptions import MqttConnectError
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from edge_agent.session import auth_refused

    def v5(code: int) -> MqttConnectError:
        return MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=code))  # type: ignore[no-untyped-call]

    assert all(auth_refused(v5(c)) for c in (0x86, 0x87, 0x8C))
    assert not any(auth_refused(v5(c)) for c in (0x85, 0x88, 0x89, 0x97))  # id, busy, load
    assert auth_refused(MqttConnectError(4)) and auth_refused(MqttConnectError(5))
    assert not auth_refused(MqttConnectError(3))  # server unavailable


async def test_hold_is_jittered_in_the_upper_half() -> None:
    sleep = RecordingSleep()
    backoff = Backoff(rng=random.Random(2), sleep=sleep)
    for _ in range(50):
        await backoff.hold(100.0)
    assert all(50.0 <= d <= 100.0 for d in sleep.delays) and len(set(sleep.delays)) > 1
