"""The federation stops by itself — on a target accuracy, and separately on a plateau — with
real agents (``fedmq.simulate.Fleet``) on load_digits, a real Mosquitto and the real
orchestrator. The reason is recorded (server state and audit), agents are told and go idle,
and the versions carry federated evaluation and per-device drift signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from fedmq.simulate import Fleet, FleetData, FleetSpec, provision_fleet, shard_data
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.service import Orchestrator
from schemas import AgentState
from tests.support.waiting import until

SPEC = FleetSpec(devices=5, dataset="digits", split="iid", seed=0, battery_fraction=0.0,
                 time_scale=1.0)


@dataclass
class Run:
    orch: Orchestrator
    fleet: Fleet
    data: FleetData


@pytest.fixture
def digits(tmp_path: Path) -> tuple[FleetData, Path]:
    data = shard_data(SPEC)
    assert data.test.y is not None
    path = tmp_path / "validation.npz"
    np.savez(path, X=data.test.X, y=data.test.y)
    return data, path


def digits_config(make_config: Callable[..., Config], validation: Path,
                  **stopping: Any) -> Config:
    return make_config(
        model={"kind": "softmax", "n_features": 64, "n_classes": 10, "seed": 0},
        training={"epochs": 2, "batch_size": 16, "lr": 0.1, "deadline_s": 30.0},
        aggregation={"k": 3, "max_staleness": 20},
        selection={"retry_after_s": 0.5},
        evaluation={"dataset": str(validation), "federated_every": 1, "federated_devices": 2},
        stopping=stopping,
    )


@contextlib.asynccontextmanager
async def _run(config: Config, broker: MosquittoBroker, data: FleetData, workdir: Path
               ) -> AsyncIterator[Run]:
    bundles = await provision_fleet(config, SPEC.device_ids())
    await broker.reload()
    async with Orchestrator(config, store_synchronous="NORMAL") as orch, \
            Fleet(bundles, data.shards, workdir, SPEC,
                  agent_config=AgentConfig(heartbeat_s=0.3, holdout=0.2)) as fleet:
        yield Run(orch, fleet, data)


async def _stops_and_agents_go_idle(run: Run) -> str:
    async with asyncio.timeout(60):
        reason = await run.orch.wait_stopped()
    # told by Control(stop) and by the retained model's stopped flag: every agent goes idle
    for agent in run.fleet.agents:
        await agent.wait_until(lambda a: a.state[0] is AgentState.STOPPED, 10)
    tasks = [a.stats.tasks_received for a in run.fleet.agents]
    handed_out = run.orch.counters["tasks"] + run.orch.counters["tasks.evaluate"]
    # several heartbeats from every agent, each handled: no new task for anyone (a task is
    # counted before it is sent)
    heard = run.orch.counters["status"]
    await until(lambda: run.orch.counters["status"] >= heard + 2 * len(run.fleet.agents), 30)
    assert run.orch.counters["tasks"] + run.orch.counters["tasks.evaluate"] == handed_out
    assert [a.stats.tasks_received for a in run.fleet.agents] == tasks
    store = run.orch.store
    recorded = json.loads(await store.get_server_state("stopped") or b"{}")
    assert recorded["reason"] == reason
    audit = await store.list_audit(event="stopped")
    assert [e.reason for e in audit] == [reason]
    return reason


async def test_a_run_stops_on_target_accuracy_with_federated_eval_and_drift(
    make_config: Callable[..., Config], broker: MosquittoBroker,
    digits: tuple[FleetData, Path], tmp_path: Path,
) -> None:
    data, validation = digits
    config = digits_config(make_config, validation, target_metric=0.6, max_wall_s=90.0)
    async with _run(config, broker, data, tmp_path / "agents") as run:
        reason = await _stops_and_agents_go_idle(run)
        assert reason.startswith("target_metric"), reason
        store = run.orch.store
        latest = await store.latest_version()
        assert latest is not None and latest.metrics["server_metric"] >= 0.6
        versions = await store.list_versions()
        # federated evaluation: agents' reports folded, sample-weighted, into the metrics
        folded = [v.metrics for v in versions if "federated_metric" in v.metrics]
        assert folded, [v.metrics for v in versions]
        for m in folded:
            reports = {k: r for k, r in m.items() if k.startswith("federated/")}
            assert 1 <= m["federated_devices"] == len(reports) <= 2
            total = sum(r["samples"] for r in reports.values())
            expect = sum(r["samples"] * r["metric"] for r in reports.values()) / total
            assert m["federated_samples"] == total
            assert m["federated_metric"] == pytest.approx(expect)
        # drift: each contributor's update norm and cosine to the aggregate
        drift = [v.metrics["drift"] for v in versions if "drift" in v.metrics]
        assert drift
        for signals in drift:
            for values in signals.values():
                assert values["norm"] > 0 and -1.0 <= values["cosine"] <= 1.0
        assert any(s["cosine"] > 0 for signals in drift for s in signals.values())


async def test_a_run_stops_on_a_plateau(
    make_config: Callable[..., Config], broker: MosquittoBroker,
    digits: tuple[FleetData, Path], tmp_path: Path,
) -> None:
    data, validation = digits
    # no version can improve by more than 1.0 accuracy: after the first, every evaluated
    # version counts towards the patience of 2
    config = digits_config(make_config, validation, patience=2, min_delta=1.0,
                           max_wall_s=90.0)
    async with _run(config, broker, data, tmp_path / "agents") as run:
        reason = await _stops_and_agents_go_idle(run)
        assert reason.startswith("patience"), reason
        assert run.orch.version >= 2
