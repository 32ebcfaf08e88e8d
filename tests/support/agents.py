"""Edge agents for tests: quick timings, a constructor, and waiting until one is ready.

    agent = new_agent(bundle, shard, tmp_path / "state.db")
    async with agent:
        await running_agent_ready(agent, orch)      # enrolled, model held and reported

The ``make_agent`` and ``ready`` fixtures (tests/edge_agent/conftest.py) hand these out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.data import LocalData
from edge_agent.datastream import DataDirectory
from schemas import Bundle
from tests.support.fake_orchestrator import FakeOrchestrator

FAST = AgentConfig(heartbeat_s=30.0, enroll_retry_s=0.5, ack_timeout_s=1.0,
                   backoff_base_s=0.05, backoff_cap_s=0.5, model_wait_s=10.0, seed=3,
                   keepalive_s=5)
"""Agent timings for tests: quick retries and reconnects, heartbeats only on events."""


def random_data(seed: int) -> LocalData:
    """30 samples of 8 features and 3 classes: the default test model's data (``MODEL`` in
    ``tests.support.service_config``)."""
    rng = np.random.default_rng(seed)
    return LocalData(X=rng.standard_normal((30, 8)).astype(np.float32),
                     y=rng.integers(0, 3, 30).astype(np.int64))


def new_agent(bundle: Bundle, data: LocalData | DataDirectory, state: str | os.PathLike[str],
              config: AgentConfig = FAST, **kwargs: Any) -> Agent:
    return Agent(bundle, data, Path(state), config=config, **kwargs)


async def running_agent_ready(agent: Agent, orch: FakeOrchestrator, within: float = 10.0) -> None:
    """Wait until the agent is enrolled, holds the orchestrator's model, and reported it."""
    await agent.wait_until(
        lambda a: a.enrollment is not None and a.model_version == orch.model_version, within)
    await orch.wait_until(
        lambda: any(s.model_version == orch.model_version
                    for s in orch.statuses_of(agent.device_id)), within)
    # the orchestrator can see the status before the agent has its PUBACK and records it
    await agent.wait_until(
        lambda a: a.last_status is not None and a.last_status.model_version == orch.model_version,
        within)
