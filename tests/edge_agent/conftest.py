"""Fixtures for the edge agent: a digits shard, a small model, a fake orchestrator on the test
broker (:class:`tests.support.fake_orchestrator.FakeOrchestrator`, which overrides the real
``orchestrator`` fixture of tests/conftest.py here) and a fake clock."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.data import LocalData, load_local_data
from orchestrator.broker import MosquittoBroker
from orchestrator.convergence.datasets import load_named
from orchestrator.models import BuiltModel, build_model
from tests.support.agent_clock import FakeClock
from tests.support.agents import FAST, new_agent, running_agent_ready
from tests.support.fake_orchestrator import SPEC, FakeOrchestrator


@pytest.fixture
def fed() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def orchestrator(broker: MosquittoBroker, fed: str) -> AsyncIterator[FakeOrchestrator]:
    async with FakeOrchestrator(broker, fed) as orch:
        yield orch


@pytest.fixture(scope="session")
def built_model() -> BuiltModel:
    return build_model(SPEC)


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_named("digits")
    assert data.y is not None
    return data.X, data.y


@pytest.fixture
def shard_path(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> Path:
    """A 300-sample digits shard written as a device's ``.npz`` file."""
    X, y = digits
    index = np.random.default_rng(7).permutation(len(X))[:300]
    path = tmp_path / "shard.npz"
    np.savez(path, X=X[index].astype(np.float32), y=y[index].astype(np.int64))
    return path


@pytest.fixture
def shard(shard_path: Path) -> LocalData:
    return load_local_data(shard_path)


@pytest.fixture
def agent_config() -> AgentConfig:
    return FAST


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock that moves only when the test advances it (see ``tests.support.agent_clock``)."""
    return FakeClock()


@pytest.fixture
def make_agent() -> Callable[..., Agent]:
    """``make_agent(bundle, data, state_path, config=FAST, **kwargs) -> Agent``."""
    return new_agent


@pytest.fixture
def ready() -> Callable[..., Awaitable[None]]:
    """``await ready(agent, orch)``: enrolled, model held and reported."""
    return running_agent_ready
