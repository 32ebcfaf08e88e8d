"""Update ingestion through the running service: acks after commit, duplicates, and every
rejection reason on record (ledger + audit) while the service keeps running."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
from nacl.signing import SigningKey

from orchestrator.config import Config
from orchestrator.devices.registry import bump_generation
from orchestrator.service import Orchestrator
from schemas import AckOutcome, Codec, CodecSpec, Update, encode_params
from tests.support.sim_device import random_delta
from tests.support.waiting import until

FLOAT32 = CodecSpec(Codec.FLOAT32)


async def test_accepted_update_is_in_the_ledger_before_its_ack(
    orchestrator: Orchestrator, devices: Callable[..., Any],
) -> None:
    dev = await devices(orchestrator, "dev-1")
    seq, update = dev.update(random_delta(orchestrator.params))
    await dev.send(update)
    ack = (await dev.wait_acks([seq]))[seq]
    assert ack.outcome is AckOutcome.ACCEPTED
    # the ack came after the commit: the row is there the moment the ack is
    rows = await orchestrator.store.ledger(sender="dev-1")
    assert [(r.seq, r.status) for r in rows] == [(seq, "buffered")]
    assert rows[0].meta["sealed"] is True and rows[0].meta["codec"] == "int8"
    assert orchestrator.buffered == 1 and orchestrator.counters["accepted"] == 1


async def test_duplicate_is_acked_again_and_never_applied_twice(
    orchestrator: Orchestrator, devices: Callable[..., Any],
) -> None:
    dev = await devices(orchestrator, "dev-2")
    seq, update = dev.update(random_delta(orchestrator.params))
    await dev.send(update, update)  # twice in one batch
    await dev.wait_acks([seq])
    (ack,) = dev.ack_messages
    assert [(e.seq, e.outcome) for e in ack.entries] == [
        (seq, AckOutcome.ACCEPTED), (seq, AckOutcome.DUPLICATE)]
    dev.acks.clear()
    await dev.send(update)  # and again later
    again = await dev.wait_acks([seq])
    assert again[seq].outcome is AckOutcome.DUPLICATE
    rows = await orchestrator.store.ledger(sender="dev-2")
    assert len(rows) == 1 and orchestrator.buffered == 1


async def test_every_kind_of_bad_update_is_rejected_on_record(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    config = make_config(ingest={"max_update_bytes": 2048},
                         aggregation={"k": 1, "max_staleness": 0})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        dev = await devices(orch, "dev-3")
        delta = random_delta(orch.params)
        # version 1, so that base version 0 becomes too stale (max_staleness 0)
        seq0, good = dev.update(delta)
        await dev.send(good)
        async with asyncio.timeout(10):
            await orch.wait_for_version(1)
        await dev.wait_acks([seq0])

        sent: dict[str, int] = {}
        sent["stale"], stale = dev.update(delta, base_version=0)
        sent["unknown_version"], future = dev.update(delta, base_version=7)
        nan = {k: np.full_like(v, np.nan) for k, v in delta.items()}
        sent["non_finite"], bad_values = dev.update(nan, base_version=1, codec=FLOAT32)
        wrong = {k: np.zeros((2, 2), np.float32) for k in delta}
        sent["shape_mismatch"], bad_shape = dev.update(wrong, base_version=1)
        message = Update(task_id=secrets.token_hex(2000), base_version=1, num_samples=5,
                         tensors=encode_params(delta, FLOAT32, np.random.default_rng(0)))
        sent["too_large"], big = dev.sign(message)
        sent["wrong_federation"], other_fed = dev.update(delta, base_version=1, fed="otherfed")
        _, forged = dev.update(delta, base_version=1, key=SigningKey.generate())
        await dev.send(stale, future, bad_values, bad_shape, big, other_fed, forged)
        acks = await dev.wait_acks(list(sent.values()))
        for reason, seq in sent.items():
            assert acks[seq].outcome is AckOutcome.REJECTED, reason
            assert acks[seq].reason == reason

        # a replay: far below the window once a much later seq was seen
        _, jump = dev.update(delta, base_version=1, seq=dev.seq + 5000)
        dev.seq += 5000
        sent["replay"], replayed = dev.update(delta, base_version=1, seq=10)
        await dev.send(jump, replayed)
        acks = await dev.wait_acks([sent["replay"]])
        assert acks[sent["replay"]].reason == "replay"

        ledger = {(r.reason, r.seq) for r in await orch.store.ledger(status="rejected")}
        for reason, seq in sent.items():
            assert (reason, seq) in ledger
        assert ("bad_signature", None) in ledger  # forged: no authentic seq, no ack
        audited = {a.reason for a in await orch.store.list_audit(device="dev-3")}
        assert set(sent) | {"bad_signature"} <= audited
        assert orch.counters["rejected.bad_signature"] == 1

        # a device the store revoked (broker credential not yet removed): refused too
        await orch.store.set_status("dev-3", "revoked")
        await bump_generation(orch.store)
        # the service polls the generation about once a second
        await until(lambda: (view := orch.registry.get("dev-3")) is not None
                    and view.status == "revoked")
        seq, late = dev.update(delta, base_version=orch.version)
        await dev.send(late)
        assert (await dev.wait_acks([seq]))[seq].reason == "revoked"
        assert await orch.store.ledger(sender="dev-3", reason="revoked")

        # the service is still fine: another device's update goes through
        other = await devices(orch, "dev-4")
        seq, ok = other.update(delta, base_version=orch.version)
        await other.send(ok)
        assert (await other.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED


async def test_device_without_a_key_is_an_unknown_sender(
    orchestrator: Orchestrator, devices: Callable[..., Any],
) -> None:
    dev = await devices(orchestrator, "dev-5", enroll=False)
    _, update = dev.update(random_delta(orchestrator.params))
    await dev.send(update)
    # the service records it without answering: wait for the count, then read the ledger
    await until(lambda: orchestrator.counters["rejected.unknown_sender"] == 1)
    (row,) = await orchestrator.store.ledger(sender="dev-5")
    assert (row.status, row.reason, row.seq) == ("rejected", "unknown_sender", None)
    assert dev.acks == {}  # nothing authentic to answer


async def test_garbage_payload_is_recorded_and_ignored(
    orchestrator: Orchestrator, devices: Callable[..., Any],
) -> None:
    dev = await devices(orchestrator, "dev-6")
    await dev.publish("updates", b"\xc1 not msgpack")
    seq, update = dev.update(random_delta(orchestrator.params))
    await dev.send(update)
    await dev.wait_acks([seq])
    reasons = [r.reason for r in await orchestrator.store.ledger(sender="dev-6")]
    assert reasons == ["malformed", None]
