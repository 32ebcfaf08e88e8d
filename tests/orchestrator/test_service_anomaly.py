"""Anomaly detection end to end, on a real Mosquitto with real agents, ONNX Runtime and
SQLite: the federation first fixes its feature standardisation from the devices' pooled
statistics (devices in raw, offset units), trains an autoencoder, agrees an anomaly threshold
from the devices' noisy score histograms, and a device watching a data directory flags the
faulty samples that arrive, which the fleet view then shows."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_agent.data import LocalData
from edge_agent.datastream import DataDirectory
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.ops.fleet_summary import fleet_rows, fleet_totals
from orchestrator.service import Orchestrator
from orchestrator.store import Store
from schemas.annex import ModelAnnex, annex_from_record
from tests.support.agents import FAST, new_agent
from tests.support.waiting import until

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2, holdout=0.5, window=400, data_poll_s=0.1)
FEATURES = 8
# raw sensor units: far from zero mean and unit variance, so only a standardised model fits
OFFSET, SCALE = 100.0, 10.0


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(
        model={"kind": "autoencoder", "n_features": FEATURES, "n_classes": 0, "hidden": [3]},
        training={"epochs": 2, "batch_size": 16, "lr": 0.05},
        aggregation={"k": 2, "max_staleness": 50},
        selection={"concurrency": 4, "retry_after_s": 0.2},
        evaluation={"federated_every": 1, "federated_devices": 3},
        anomaly={"quantile": 0.97, "score_noise": 0.5, "min_samples": 150},
        standardize={"enabled": True, "min_devices": 3, "min_samples": 300},
        stopping={"max_versions": 500})


def _healthy(rng: np.random.Generator, n: int) -> np.ndarray:
    # samples near a 2-D subspace: an autoencoder with a 3-wide bottleneck reconstructs them
    z = rng.standard_normal((n, 2))
    basis = np.linspace(-1, 1, 2 * FEATURES).reshape(2, FEATURES)
    x = z @ basis + 0.05 * rng.standard_normal((n, FEATURES))
    return (OFFSET + SCALE * x).astype(np.float32)


def _drop(directory: Path, name: str, X: np.ndarray) -> None:
    part = directory / f"{name}.part"
    with part.open("wb") as handle:
        np.savez(handle, X=X)
    os.replace(part, directory / name)


async def _annex(store: Store) -> ModelAnnex:
    latest = await store.latest_version()
    assert latest is not None
    return annex_from_record(latest.metrics.get("annex", {}))


async def test_standardised_federation_agrees_a_threshold_and_a_device_flags_faults(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    watched = tmp_path / "incoming"
    watched.mkdir()
    _drop(watched, "000.npz", _healthy(rng, 300))
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(3)]
        await broker.reload()
        files = [LocalData(_healthy(rng, 300), None) for _ in range(2)]
        async with (new_agent(bundles[0], files[0], tmp_path / "a0.db", AGENT),
                    new_agent(bundles[1], files[1], tmp_path / "a1.db", AGENT),
                    new_agent(bundles[2], DataDirectory(watched, supervised=False),
                              tmp_path / "a2.db", AGENT) as watcher):
            # 1. the standardisation is fixed on v0, before any training
            await until(lambda: watcher.model is not None
                             and watcher.model.annex.standardized, 30)
            v0 = (await orch.store.list_versions())[0]
            assert v0.metrics["standardized"]["devices"] == 3
            fixed = annex_from_record(v0.metrics["annex"])
            assert np.allclose(fixed.feature_mean, OFFSET, atol=0.3 * SCALE)
            assert np.allclose(1 / np.asarray(fixed.feature_scale), SCALE * np.std(
                np.linspace(-1, 1, 2 * FEATURES).reshape(2, FEATURES), axis=0) * np.sqrt(2),
                rtol=0.5)
            assert await orch.store.list_audit(event="standardized")
            # 2. training, then a threshold the watching device holds
            await until(lambda: watcher.model is not None
                             and watcher.model.annex.anomaly_threshold is not None
                             and orch.version >= 5, 90)
            annex = await _annex(orch.store)
            assert annex.feature_mean == fixed.feature_mean  # inherited by later versions
            assert annex.anomaly_threshold is not None
            # 3. a file with faults arrives: they are flagged, healthy samples mostly not
            faulty = _healthy(rng, 40)
            faulty[:, :4] += 8 * SCALE  # far off the healthy subspace
            _drop(watched, "001.npz", np.concatenate([_healthy(rng, 160), faulty]))
            await until(lambda: watcher.stats.scored == 200, 30)
            assert 38 <= watcher.stats.anomalies <= 40 + 16  # all 40 faults, few false alarms
            await until(lambda: watcher.last_status is not None
                             and watcher.last_status.anomalies == watcher.stats.anomalies, 10)

            async def reported() -> bool:
                device = await orch.store.get_device("dev-2")
                return device is not None and device.last_status is not None and json.loads(
                    device.last_status).get("anomalies") == watcher.stats.anomalies

            async with asyncio.timeout(10):
                while not await reported():  # noqa: ASYNC110  # a store row, no event
                    await asyncio.sleep(0.05)
        rows = fleet_rows(await orch.store.list_devices(), now_ms=0, current_version=0,
                          heartbeat_s=1.0)
        flagged = {r["device_id"]: (r["scored"], r["anomalies"]) for r in rows}
        assert flagged["dev-2"] == (200, watcher.stats.anomalies)
        assert flagged["dev-0"] == (0, 0)  # a one-file device scores nothing new
        assert fleet_totals(rows).anomalies == watcher.stats.anomalies
