"""``fedmq simulate`` as an operator runs it: a subprocess with a site config, beside a running
orchestrator on a real Mosquitto. It provisions its devices, runs real agents that enroll and
train, and stops cleanly on SIGTERM; bad arguments give one line and a non-zero exit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.config import load_config
from orchestrator.service import Orchestrator
from orchestrator.store import Store
from tests.support.service_config import config_file

DEVICES = 3


def _site_toml(tmp_path: Path, broker: MosquittoBroker) -> Path:
    """A site config on the test broker; ``pid_file`` lets the simulator's provisioning
    reload the broker, as ``fedmq device add`` does."""
    return config_file(
        tmp_path / "site.toml", broker, federation={"id": "site", "heartbeat_s": 1.0},
        broker={"pid_file": str(broker.pid_file)},
        model={"kind": "softmax", "n_features": 13, "n_classes": 3},
        aggregation={"k": 2}, ingest={"synchronous": "NORMAL"}, stopping={"max_versions": 2})


async def _simulate(*args: str, out: Path, err: Path) -> asyncio.subprocess.Process:
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedmq.cli", "simulate", *args, stdout=stdout,
            stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def test_simulate_runs_a_fleet_that_trains_against_a_running_orchestrator(
    tmp_path: Path, broker: MosquittoBroker,
) -> None:
    site = _site_toml(tmp_path, broker)
    config = load_config(site)
    out, err = tmp_path / "simulate.out", tmp_path / "simulate.err"
    async with Orchestrator(config) as orch:
        proc = await _simulate("--config", str(site), "--devices", str(DEVICES),
                               "--dataset", "wine", "--split", "iid",
                               "--battery-fraction", "0", "--workdir", str(tmp_path / "fleet"),
                               out=out, err=err)
        try:
            async with asyncio.timeout(90):
                reason = await orch.wait_stopped()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log = err.read_text()[-3000:]
    assert reason.startswith("max_versions"), log
    assert code == 0, log
    assert f"fedmq simulate: {DEVICES} agents running" in out.read_text(), log

    ids = {f"sim-{i:03d}" for i in range(DEVICES)}
    bundles = {json.loads(p.read_text())["device_id"]
               for p in (tmp_path / "fleet").glob("*.bundle.json")}
    assert bundles == ids  # kept for the next run of the same fleet
    async with Store.open(config.federation.store_path) as store:
        devices = {d.device_id: d.status for d in await store.list_devices()}
        versions = await store.list_versions()
        applied = await store.ledger(status="applied")
    assert devices == dict.fromkeys(ids, "active")  # provisioned and enrolled
    assert [v.version for v in versions] == [0, 1, 2]
    assert len(applied) == 2 * 2 and {r.sender for r in applied} <= ids
    assert {r.applied_version for r in applied} == {1, 2}


@pytest.mark.parametrize("args, code, says", [
    (["--devices", "0"], 1, "devices must be > 0"),
    (["--split", "random"], 2, "argument --split: invalid choice: 'random'"),
], ids=["devices-0", "unknown-split"])
async def test_simulate_bad_arguments_give_one_line(
    tmp_path: Path, args: list[str], code: int, says: str,
) -> None:
    site = tmp_path / "site.toml"
    site.write_text('[federation]\nid = "site"\n[model]\nkind = "softmax"\nn_features = 13\n'
                    'n_classes = 3\n')
    out, err = tmp_path / "simulate.out", tmp_path / "simulate.err"
    proc = await _simulate("--config", str(site), *args, out=out, err=err)
    async with asyncio.timeout(60):
        assert await proc.wait() == code
    lines = err.read_text().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("fedmq simulate: ") and says in lines[0], lines
    assert not (tmp_path / "data").exists()  # nothing provisioned
