"""Device key rotation against the real orchestrator over a real Mosquitto, device side played
by a ``SimDevice`` (hand-built messages), so each rule is checked on its own: the audit row,
the carried-over replay window, the old key refused, the idempotent re-confirmation, forged
proofs, and ``fedmq device rotate`` reaching the device through the registry watch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nacl.signing import SigningKey

from orchestrator.config import Config
from orchestrator.devices.rotation import RESEND_S, RotationRequestError, request_rotation
from orchestrator.service import Orchestrator
from schemas import (
    AckOutcome,
    AgentState,
    Codec,
    CodecSpec,
    Control,
    ControlAction,
    KeyRotation,
    rotation_proof,
)
from tests.support.clock import FakeClock
from tests.support.sim_device import SimDevice, random_delta
from tests.support.waiting import until

FLOAT32 = CodecSpec(Codec.FLOAT32)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def orch(make_config: Callable[..., Config], clock: FakeClock
               ) -> AsyncIterator[Orchestrator]:
    config = make_config(aggregation={"k": 100})
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as service:
        yield service


def _rotation(dev: SimDevice, new: SigningKey, *, proof_key: SigningKey | None = None,
              seq: int | None = None) -> tuple[int, bytes]:
    proof = rotation_proof(proof_key or new, bytes(dev.key.verify_key))
    return dev.sign(KeyRotation(bytes(new.verify_key), proof), seq=seq)


async def _confirmation(dev: SimDevice) -> Control:
    answer = await dev.next("control")
    assert isinstance(answer, Control) and answer.action is ControlAction.KEY_ROTATED
    return answer


async def test_rotation_swaps_the_key_keeps_the_window_and_refuses_the_old_key(
    orch: Orchestrator, devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    dev = await devices(orch, "dev-k")
    old, new = dev.key, SigningKey.generate()
    seq, rotation = _rotation(dev, new)
    await dev.publish("rotate", rotation)
    answer = await _confirmation(dev)
    assert answer.params["public_key"] == bytes(new.verify_key)
    stored = await orch.store.get_device("dev-k")
    assert stored is not None and stored.public_key == bytes(new.verify_key)
    (row,) = await orch.store.list_audit(device="dev-k", event="key_rotated")
    assert row.detail == {"old_key": bytes(old.verify_key).hex(),
                          "new_key": bytes(new.verify_key).hex(), "seq": seq}

    # the old key is refused for status and updates; the seq history goes on
    await dev.status(state=AgentState.IDLE)
    await until(lambda: orch.counters["status.rejected.bad_signature"] == 1)
    useq, stale = dev.update(random_delta(orch.params), codec=FLOAT32)
    await dev.send(stale)
    await until(lambda: orch.counters["rejected.bad_signature"] == 1)
    assert useq not in dev.acks
    dev.key = new
    _, replayed = dev.update(random_delta(orch.params), codec=FLOAT32, seq=seq)
    await dev.send(replayed)  # the rotation's own seq, now under the new key: seen already
    assert (await dev.wait_acks([seq]))[seq].outcome is AckOutcome.DUPLICATE
    nseq, fresh = dev.update(random_delta(orch.params, seed=2), codec=FLOAT32)
    await dev.send(fresh)
    assert (await dev.wait_acks([nseq]))[nseq].outcome is AckOutcome.ACCEPTED


async def test_a_device_that_missed_the_confirmation_is_confirmed_again(
    orch: Orchestrator, devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    dev = await devices(orch, "dev-m")
    new = SigningKey.generate()
    _, rotation = _rotation(dev, new)
    await dev.publish("rotate", rotation)
    await _confirmation(dev)  # ... which the device "missed": it asks again, old key
    _, again = _rotation(dev, new)
    await dev.publish("rotate", again)
    assert (await _confirmation(dev)).params["public_key"] == bytes(new.verify_key)
    assert orch.counters["rotate.reconfirmed"] == 1 and orch.counters["rotate.rotated"] == 1
    assert len(await orch.store.list_audit(device="dev-m", event="key_rotated")) == 1

    # but the retired key cannot rotate to anything else, nor send anything else
    other = SigningKey.generate()
    _, hijack = _rotation(dev, other)
    await dev.publish("rotate", hijack)
    await until(lambda: orch.counters["rotate.rejected.bad_signature"] == 1)
    stored = await orch.store.get_device("dev-m")
    assert stored is not None and stored.public_key == bytes(new.verify_key)


async def test_a_rotation_without_a_valid_proof_is_refused(
    orch: Orchestrator, devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    dev = await devices(orch, "dev-p")
    new = SigningKey.generate()
    _, forged = _rotation(dev, new, proof_key=SigningKey.generate())
    await dev.publish("rotate", forged)
    _, foreign = dev.sign(KeyRotation(bytes(new.verify_key),
                                      rotation_proof(new, bytes(dev.key.verify_key))),
                          key=SigningKey.generate())
    await dev.publish("rotate", foreign)
    await until(lambda: orch.counters["rotate.rejected.bad_signature"] == 2)
    stored = await orch.store.get_device("dev-p")
    assert stored is not None and stored.public_key == bytes(dev.key.verify_key)
    assert await orch.store.list_audit(device="dev-p", event="key_rotated") == []


async def test_an_operator_request_reaches_the_device_until_it_rotates(
    orch: Orchestrator, clock: FakeClock, devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    # the orders go out from the registry poll, which reads the store (another thread): time
    # moves only once it is asleep again, so each poll runs at its own time, however slow the
    # machine (without, a poll still at it when time passed the resend skipped it)
    polls = ("registry",)
    dev = await devices(orch, "dev-q")
    with pytest.raises(RotationRequestError, match="no device 'nobody'"):
        await request_rotation(orch.store, "nobody", now_ms=clock.wall_ms())
    await request_rotation(orch.store, "dev-q", now_ms=clock.wall_ms())
    await clock.advance(1.0, wait_for=polls)  # the registry poll
    order = await dev.next("control")
    assert isinstance(order, Control) and order.action is ControlAction.ROTATE_KEY
    await clock.advance(RESEND_S - 1, wait_for=polls)
    assert orch.counters["rotate.requested"] == 1  # polled, but not yet due again
    await clock.advance(2.0, wait_for=polls)  # not rotated yet: asked again
    order = await dev.next("control")
    assert isinstance(order, Control) and order.action is ControlAction.ROTATE_KEY
    _, rotation = _rotation(dev, SigningKey.generate())
    await dev.publish("rotate", rotation)
    await _confirmation(dev)
    await clock.advance(RESEND_S + 1, wait_for=polls)
    assert orch.counters["rotate.requested"] == 2  # done: not asked a third time
    (row,) = await orch.store.list_audit(device="dev-q", event="rotate_requested")
    assert row.actor == "cli"
