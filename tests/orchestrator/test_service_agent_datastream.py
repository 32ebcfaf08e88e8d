"""A real agent trains on a data directory (``--data DIR``) against the real orchestrator and
Mosquitto: a second file that appears after start enters the sliding window, and the updates
trained on the window that holds it are accepted."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_agent.agent
from edge_agent.data import LocalData
from edge_agent.datastream import DataDirectory
from edge_agent.training import TrainedUpdate
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from tests.support.agents import FAST, new_agent

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2, holdout=0.0, window=50, data_poll_s=0.1)


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(aggregation={"k": 1, "max_staleness": 50},
                       selection={"concurrency": 4, "retry_after_s": 0.2},
                       stopping={"max_versions": 100})


def _drop(directory: Path, name: str, seed: int, n: int) -> None:
    """A file written under another name and renamed into place, as a sensor would."""
    rng = np.random.default_rng(seed)
    part = directory / f"{name}.part"
    with part.open("wb") as handle:
        np.savez(handle, X=rng.standard_normal((n, 8)).astype(np.float32),
                 y=rng.integers(0, 3, n).astype(np.int64))
    os.replace(part, directory / name)


def _recording(sizes: list[int]) -> Callable[..., TrainedUpdate]:
    """``train_update``, noting the size of the data of every update it builds, in order."""
    honest = getattr(edge_agent.agent, "train_update")  # noqa: B009  # not re-exported

    def train(ort: Any, base: Any, task: Any, data: LocalData, **kwargs: Any) -> TrainedUpdate:
        trained: TrainedUpdate = honest(ort, base, task, data, **kwargs)
        if trained.update is not None:
            sizes.append(len(data))
        return trained

    return train


async def test_a_file_arriving_after_start_enters_the_window_and_is_trained_on(
    config: Config, broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    monkeypatch.setattr(edge_agent.agent, "train_update", _recording(sizes))
    data_dir = tmp_path / "incoming"
    data_dir.mkdir()
    _drop(data_dir, "000.npz", 0, 30)
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundle = await provision(orch.store, config, "dev-0",
                                 orchestrator_key=orch.public_key.hex())
        await broker.reload()
        async with new_agent(bundle, DataDirectory(data_dir), tmp_path / "a.db", AGENT) as agent:
            await agent.wait_until(lambda a: a.stats.acked["accepted"] >= 1, 30)
            assert "dev-0:data" in {t.get_name() for t in asyncio.all_tasks()}
            assert agent.stats.data_files == 1 and len(agent.train_data) == 30
            _drop(data_dir, "001.npz", 1, 30)
            await agent.wait_until(lambda a: a.stats.data_files == 2, 20)
            source = agent.data_source
            assert source is not None
            assert source.window.indices.tolist() == list(range(10, 60))  # 10 evicted
            await agent.wait_until(lambda a: 50 in sizes, 30)
            # updates are acked in the order they were built: all up to the first on the
            # window that holds the new file
            needed = sizes.index(50) + 1
            await agent.wait_until(lambda a: a.stats.acked["accepted"] >= needed, 30)
            assert sizes[0] == 30 and set(sizes) == {30, 50}
            assert sum(agent.stats.acked.values()) == agent.stats.acked["accepted"]
            assert len(agent.train_data) == 50
            assert agent.last_status is not None and agent.last_status.num_samples == 50
        assert not agent.stats.data_refused
        async with asyncio.timeout(30):  # the accepted updates are aggregated (k = 1)
            await orch.wait_for_version(2)
