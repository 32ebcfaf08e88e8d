"""Secure buckets end to end on a real Mosquitto with real agents, ONNX Runtime and SQLite:
the orchestrator tasks cohorts, relays their keys and sealed shares, collects masked inputs,
unmasks only the sum and makes versions from it; no device's delta is ever in its store."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from schemas.messages import AckEntry, AckOutcome, AgentState, Message, Task
from schemas.secagg.session import MemberSession, TrainedInput
from schemas.secagg.wire import SecAggRelay, SecAggUnmask
from tests.support.agents import FAST, new_agent, random_data
from tests.support.sim_device import SimDevice
from tests.support.waiting import until

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2)
MEMBERS = 5


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(
        aggregation={"k": 1, "max_staleness": 20},
        selection={"concurrency": MEMBERS, "retry_after_s": 0.2},
        secure_aggregation={"enabled": True, "bucket_size": MEMBERS, "key_timeout_s": 20,
                            "deadline_s": 30, "form_timeout_s": 30},
        stopping={"max_versions": 3})


async def test_buckets_make_versions_from_sums_only(config: Config, broker: MosquittoBroker,
                                                    tmp_path: Path) -> None:
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex())
                   for i in range(MEMBERS)]
        await broker.reload()
        agents = [new_agent(b, random_data(i), tmp_path / f"a{i}.db", AGENT)
                  for i, b in enumerate(bundles)]
        for agent in agents:
            await agent.__aenter__()
        try:
            await until(lambda: orch.version >= 2, 60)
        finally:
            for agent in agents:
                await agent.__aexit__(None, None, None)
        ledger = await orch.store.ledger()
        accepted = [r for r in ledger if r.status in ("buffered", "applied")]
        assert accepted and all(r.sender is not None and r.sender.startswith("bucket:")
                                for r in accepted)
        assert all(sorted(r.meta["members"]) == [f"dev-{i}" for i in range(MEMBERS)]
                   for r in accepted)
        phases = await orch.store.bucket_phases()
        assert phases.get("done", 0) >= 2
        audit = await orch.store.list_audit(event="secagg_done")
        assert len(audit) >= 2
        assert all(a.stats.updates_built >= 2 for a in agents)
        assert not any(a.stats.refused for a in agents), [a.stats.refused for a in agents]


@pytest.fixture
def small(make_config: Callable[..., Config]) -> Config:
    return make_config(
        aggregation={"k": 1, "max_staleness": 20},
        selection={"concurrency": 3, "retry_after_s": 0.2},
        # every member's shares are needed: the hostile one's answers are always judged
        secure_aggregation={"enabled": True, "bucket_size": 3, "threshold": 1.0,
                            "key_timeout_s": 30, "deadline_s": 30, "form_timeout_s": 30},
        stopping={"max_versions": 1})


async def _judged(device: SimDevice, message: Message) -> AckEntry:
    seq, payload = device.sign(message)
    await device.send(payload)
    return (await device.wait_acks([seq]))[seq]


async def test_bad_stage_messages_are_refused_audited_and_spoil_nothing(
    small: Config, broker: MosquittoBroker, tmp_path: Path,
    devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    """A member holding its own credentials sends every kind of bad stage message between
    its good ones; each is refused with its reason and audited, and the bucket completes."""
    async with Orchestrator(small, store_synchronous="NORMAL") as orch:
        evil = await devices(orch, "evil")
        bundles = [await provision(orch.store, small, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(2)]
        await broker.reload()
        async with (new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT) as a0,
                    new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT) as a1):
            task = None
            while task is None or not isinstance(task, Task) or task.bucket is None:
                await evil.status(state=AgentState.IDLE, model_version=0)
                got = await evil.next("task", 10)
                task = got if isinstance(got, Task) else None
            spec = task.bucket
            seal = evil.key.to_curve25519_private_key()
            session, keys = MemberSession.join(spec, "evil", seal)
            bad_keys = dataclasses.replace(keys, shares={"nobody": b"x"})
            assert (await _judged(evil, bad_keys)).reason == "secagg_bad_share"
            other = dataclasses.replace(keys, bucket_id="b-elsewhere")
            assert (await _judged(evil, other)).reason == "secagg_unknown_bucket"
            assert (await _judged(evil, keys)).outcome is AckOutcome.ACCEPTED
            assert (await _judged(evil, keys)).outcome is AckOutcome.DUPLICATE
            relay = await evil.next("secagg", 20)
            assert isinstance(relay, SecAggRelay)
            session.on_relay(relay, seal)
            n = sum(p.size for p in (await orch.store.get_version(0)).params.values())
            good = session.masked_input(TrainedInput("t", np.zeros(n, np.float32), 24))
            short = dataclasses.replace(good, n=n - 1, values=good.values[:-2])
            assert (await _judged(evil, short)).reason == "secagg_bad_parameter"
            assert (await _judged(evil, good)).outcome is AckOutcome.ACCEPTED
            twice = dataclasses.replace(good, values=bytes(len(good.values)))
            # a second input: refused as such, or because the inputs have closed meanwhile
            second = (await _judged(evil, twice)).reason
            assert second in ("secagg_bad_share", "secagg_bad_parameter")
            request = await evil.next("secagg", 30)
            assert isinstance(request, SecAggUnmask)
            answer = session.on_unmask(request)
            mangled = dataclasses.replace(answer, shares=[
                dataclasses.replace(answer.shares[0], share=b"\x01" * 5)])
            assert (await _judged(evil, mangled)).reason == "secagg_bad_share"
            assert (await _judged(evil, answer)).outcome is AckOutcome.ACCEPTED
            again = dataclasses.replace(answer, shares=answer.shares[:1])
            late = (await _judged(evil, again)).reason  # answering twice
            assert late in ("secagg_share_conflict", "secagg_closed")
            await until(lambda: orch.version >= 1, 30)
            assert a0.stats.refused == {} and a1.stats.refused == {}
        audit = await orch.store.list_audit(event="rejected", device="evil")
        reasons = sorted(a.reason or "" for a in audit)
        expected = ["secagg_bad_share", "secagg_unknown_bucket", "secagg_bad_parameter",
                    second, "secagg_bad_share"] + ([late] if late != "secagg_closed" else [])
        assert reasons == sorted(expected), reasons
        (applied,) = [r for r in await orch.store.ledger() if r.status == "applied"]
        assert sorted(applied.meta["members"]) == ["dev-0", "dev-1", "evil"]
