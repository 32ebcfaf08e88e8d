"""Secure buckets on the digits demo: 20 real agents, a real Mosquitto, ONNX Runtime and
SQLite. In the first bucket of ten, two members go offline after dealing their shares and
before sending their masked input, and three more right after theirs was acknowledged: the
bucket still completes from the five that answer, and the federation's accuracy stays within
a point of plain async FedBuff after the same number of versions of ten device updates."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from fedmq.demo import prepare_demo, run_demo
from fedmq.simulate import Fleet, device_sims
from orchestrator.store import Store

pytestmark = pytest.mark.integration  # the demo starts an embedded Mosquitto

VERSIONS = 50


class Link:
    """A device's link, switched by the test."""

    def __init__(self) -> None:
        self.up = True

    def __call__(self, now: float) -> bool:
        return self.up


async def _drop_in_first_bucket(fleet: Fleet, links: list[Link], log: list[str]) -> None:
    """Two members offline before their input, three after it; back once the bucket ends."""
    before: set[int] = set()
    after: set[int] = set()
    acks_then: dict[int, int] = {}  # acks each member had when its input was first seen made
    bucket = None
    while True:
        await asyncio.sleep(0.01)
        for i, agent in enumerate(fleet.agents):
            sessions = agent.buckets
            if bucket is None and sessions:
                bucket = next(iter(sessions))
            session = sessions.get(bucket) if bucket is not None else None
            if session is None or i in before | after:
                continue
            acked = len(agent.outbox) == 0
            if len(before) < 2 and acked and not session.relayed:
                before.add(i)
                links[i].up = False
                log.append(f"{agent.device_id} offline before its input")
            if session.input_sent:
                acks_then.setdefault(i, agent.stats.acked.total())
            if (len(after) < 3 and acked and session.input_sent and session.answered is None
                    and agent.stats.acked.total() > acks_then[i] and i not in before):
                after.add(i)
                links[i].up = False
                log.append(f"{agent.device_id} offline after its input")
        if bucket is not None and len(before) == 2 and len(after) == 3:
            log.append(bucket)
            break
    online = [a for i, a in enumerate(fleet.agents) if links[i].up]
    while any(bucket in a.buckets for a in online):  # noqa: ASYNC110  # until it ends
        await asyncio.sleep(0.2)
    for i in before | after:
        links[i].up = True


async def _run(tmp: Path, *, secure: bool, dropouts: bool = False
               ) -> tuple[float, int, list[str], Path]:
    setup = await asyncio.to_thread(prepare_demo, tmp, devices=20, k=10, target=1.01,
                                    max_wall_s=400.0, secure=secure, max_versions=VERSIONS)
    sims = device_sims(setup.spec)
    links = [Link() for _ in sims]
    sims = [dataclasses.replace(s, link=link) for s, link in zip(sims, links, strict=True)]
    log: list[str] = []
    agent = AgentConfig(heartbeat_s=2.0, holdout=setup.task.holdout, link_poll_s=0.05)
    result = await run_demo(
        setup, progress=io.StringIO(), sims=sims, agent_config=agent,
        alongside=(lambda fleet: _drop_in_first_bucket(fleet, links, log)) if dropouts
        else None)
    assert result.final_accuracy is not None
    return result.final_accuracy, result.device_updates, log, setup.config.federation.store_path


@pytest.mark.slow
async def test_buckets_survive_dropouts_and_match_plain_fedbuff(tmp_path: Path) -> None:
    secure_acc, secure_updates, log, store_path = await _run(tmp_path / "secure", secure=True,
                                                             dropouts=True)
    plain_acc, plain_updates, _, _ = await _run(tmp_path / "plain", secure=False)
    print(f"secure buckets: accuracy {secure_acc:.4f} from {secure_updates} device updates; "
          f"plain FedBuff: {plain_acc:.4f} from {plain_updates}; {log}")
    assert len(log) == 6
    async with Store.open(store_path) as store:
        done = await store.list_audit(event="secagg_done")
        abandoned = await store.list_audit(event="secagg_abandoned")
    dropped = [a for a in done if a.detail["bucket"] == log[-1]]
    assert dropped, log
    assert dropped[0].detail["members"] == 10 and dropped[0].detail["survivors"] == 8
    assert len(done) == VERSIONS and not abandoned
    assert abs(secure_acc - plain_acc) <= 0.01
