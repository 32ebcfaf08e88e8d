"""``[training] optimizer = "adam"`` end to end: the orchestrator puts it in every task, real
agents train with it (Adam with weight decay and the proximal term, stepped in numpy on the
graph's own gradient), their updates are accepted and say so, and versions follow. Real
Mosquitto, real agents, the real orchestrator."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from tests.support.agents import FAST, new_agent, random_data

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2, holdout=0.0)


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(
        training={"optimizer": "adam", "lr": 0.01, "adam_betas": [0.9, 0.99],
                  "weight_decay": 0.01, "mu": 0.1, "codec": "float32"},
        aggregation={"k": 2, "max_staleness": 50},
        selection={"concurrency": 4, "retry_after_s": 0.2},
        stopping={"max_versions": 2})


async def test_agents_train_with_the_configured_adam_and_versions_are_made(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        base = orch.version
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(2)]
        await broker.reload()
        async with new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT), \
                new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT):
            async with asyncio.timeout(60):
                await orch.wait_for_version(base + 2)
        assert await orch.store.ledger(status="rejected") == []
        accepted = await orch.store.ledger(status=("buffered", "applied"))
        applied = [row for row in accepted if row.status == "applied"]
        assert len(applied) >= 4  # k = 2 per version, two versions
        assert {row.meta["optimizer"] for row in accepted} == {"adam"}
        assert {row.sender for row in accepted} <= {"dev-0", "dev-1"}
        assert all(row.meta["local_steps"] > 0 for row in accepted)
