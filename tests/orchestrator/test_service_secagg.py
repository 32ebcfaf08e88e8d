"""Secure buckets end to end on a real Mosquitto with real agents, ONNX Runtime and SQLite:
the orchestrator tasks cohorts, relays their keys and sealed shares, collects masked inputs,
unmasks only the sum and makes versions from it; no device's delta is ever in its store."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from tests.support.agents import FAST, new_agent, random_data
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
