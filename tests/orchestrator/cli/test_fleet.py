"""``fedmq fleet``, ``fedmq federation`` and ``fedmq audit`` against a running orchestrator,
a real Mosquitto and a few devices: the commands reach only the broker, and their output (the
JSON fields and values, and the human tables) says what the fleet did."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import AgentConfig
from fedmq.cli import main as fedmq_main
from fedmq.simulate import Fleet, FleetSpec, provision_fleet, shard_data
from orchestrator.broker import MosquittoBroker
from orchestrator.cli import audit, federation, fleet
from orchestrator.config import Config
from orchestrator.devices.commands import provision, write_private
from orchestrator.service import Orchestrator
from schemas import Bundle, Update, encode_params
from schemas.tensors import Codec, CodecSpec
from tests.support.paths import REPO
from tests.support.sim_device import random_delta


@dataclass
class Site:
    orch: Orchestrator
    bundle: Path


@pytest.fixture
async def site(make_config: Callable[..., Config], devices: Callable[..., Any],
               broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Site]:
    """Three devices: dev-a (gateway, online, charging), dev-b (offline), dev-c (sensor,
    online, no model yet); one accepted update each from dev-a and dev-c, one rejected."""
    config = make_config(ops={"fleet_interval_s": 0.2})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        a = await devices(orch, "dev-a")
        b = await devices(orch, "dev-b")
        c = await devices(orch, "dev-c")
        await a.status(battery_pct=90.0, charging=True, model_version=0, outbox_len=1)
        await b.status(state="offline", battery_pct=5.0, model_version=0, outbox_len=4)
        await c.status(battery_pct=40.0, thermal="serious")
        delta = random_delta(orch.params)
        seqs = []
        for dev, klass in ((a, "gateway"), (c, "sensor")):
            tensors = encode_params(delta, CodecSpec(Codec.INT8), np.random.default_rng(1))
            seq, update = dev.sign(Update(task_id="t", base_version=0, num_samples=10,
                                          tensors=tensors, device_class=klass), seal=True)
            await dev.send(update)
            seqs.append((dev, seq))
        bad_seq, bad = c.update(delta, base_version=5)
        await c.send(bad)
        seqs.append((c, bad_seq))
        for dev, seq in seqs:
            await dev.wait_acks([seq])
        await until(lambda: orch.counters["status"] >= 3)
        bundle = await provision(orch.store, orch.config, "ops-1",
                                 orchestrator_key=orch.public_key.hex(), role="operator")
        await broker.reload()
        path = tmp_path / "ops-1.bundle.json"
        write_private(path, bundle.to_json())
        yield Site(orch, path)


async def until(condition: Callable[[], Any], within: float = 10) -> None:
    """Poll ``condition`` (counters and metrics have no event to wait on)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"condition not met within {within}s")


async def run(capsys: pytest.CaptureFixture[str], command: Callable[[list[str]], int],
              *argv: str) -> tuple[int, str, str]:
    """Run a CLI ``main`` (it calls ``asyncio.run``) in a thread; (exit code, out, err)."""
    capsys.readouterr()
    code = await asyncio.to_thread(command, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_fleet_status_lists_filters_and_sorts(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    b = str(site.bundle)
    code, out, err = await run(capsys, fleet.main, "status", "--bundle", b, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["federation"] == "testfed" and doc["version"] == 0
    assert doc["totals"] == {"devices": 3, "online": 2, "outbox_backlog": 5,
                             "by_state": {"idle": 2, "offline": 1}, "anomalies": 0}
    rows = {r["device_id"]: r for r in doc["devices"]}
    assert list(rows) == ["dev-a", "dev-b", "dev-c"]
    assert rows["dev-a"] | {"last_seen_ms": None} == {
        "device_id": "dev-a", "class": "gateway", "status": "active", "online": True,
        "state": "idle", "last_seen_ms": None, "battery_pct": 90.0, "charging": True,
        "thermal": "nominal", "model_version": 0, "staleness": 0, "outbox_len": 1,
        "accepted": 1, "rejected": 0, "quarantined": 0, "isolated": False,
        "privacy_epsilon": None, "scored": 0, "anomalies": 0}
    assert rows["dev-b"]["online"] is False and rows["dev-b"]["class"] is None
    assert (rows["dev-c"]["class"], rows["dev-c"]["thermal"]) == ("sensor", "serious")
    assert (rows["dev-c"]["accepted"], rows["dev-c"]["rejected"]) == (1, 1)
    assert rows["dev-c"]["model_version"] is None and rows["dev-c"]["staleness"] is None

    async def ids(*options: str) -> list[str]:
        code, out, err = await run(capsys, fleet.main, "status", "--bundle", b, "--json",
                                   *options)
        assert code == 0, err
        return [r["device_id"] for r in json.loads(out)["devices"]]

    assert await ids("--offline") == ["dev-b"]
    assert await ids("--class", "sensor") == ["dev-c"]
    assert await ids("--stale") == ["dev-c"]  # no model reported yet
    assert await ids("--sort", "battery_pct", "--desc") == ["dev-a", "dev-c", "dev-b"]
    assert await ids("--sort", "battery_pct") == ["dev-b", "dev-c", "dev-a"]

    code, out, err = await run(capsys, fleet.main, "status", "--bundle", b)
    assert code == 0, err
    lines = out.splitlines()
    assert "federation testfed" in lines[0] and "online 2/3" in lines[0]
    by_device = {line.split()[0]: line for line in lines[2:]}
    assert "gateway" in by_device["dev-a"] and "90%+" in by_device["dev-a"]
    assert "offline" in by_device["dev-b"] and "v0" in by_device["dev-b"]
    assert "1/1" in by_device["dev-c"]


async def test_fleet_watch_follows_the_retained_summary(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await run(capsys, fleet.main, "watch", "--bundle", str(site.bundle),
                               "--json", "--count", "2", "--offline")
    assert code == 0, err
    views = [json.loads(line) for line in out.splitlines()]
    assert len(views) == 2 and views[1]["ts_ms"] > views[0]["ts_ms"]
    for view in views:
        assert [r["device_id"] for r in view["devices"]] == ["dev-b"]
        assert view["totals"]["online"] == 2 and view["version"] == 0
    code, out, err = await run(capsys, fleet.main, "watch", "--bundle", str(site.bundle),
                               "--count", "1", "--class", "gateway")
    assert code == 0, err
    assert "federation testfed" in out and "online 2/3" in out
    assert "dev-a" in out and "dev-b" not in out


async def test_federation_status_and_audit(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    b = str(site.bundle)
    code, out, err = await run(capsys, federation.main, "status", "--bundle", b, "--json")
    assert code == 0, err
    fed = json.loads(out)
    assert (fed["federation"], fed["mode"], fed["version"]) == ("testfed", "async", 0)
    assert fed["buffer"] == {"fill": 2, "capacity": 3}
    updates = fed["ingest"]["updates"]
    assert (updates["received"], updates["accepted"], updates["rejected"]) == (3, 2, 1)
    assert updates["rejected_by_reason"]["unknown_version"] == 1
    assert fed["ingest"]["rate_per_s"]["accepted"] > 0
    assert fed["devices"]["online"] == 2
    assert [e["version"] for e in fed["last_evaluations"]] == [0]
    assert fed["stopping"] == {
        "enabled": False, "stopped": False, "reason": None,
        "rules": {"target_metric": None, "patience": None, "min_delta": 0.0,
                  "max_versions": None, "max_wall_s": None},
        "best_metric": None, "best_version": None, "since_best": 0,
        "started_ms": fed["stopping"]["started_ms"]}
    code, out, err = await run(capsys, federation.main, "status", "--bundle", b)
    assert code == 0, err
    assert "testfed" in out and "2/3" in out and "2 accepted, 1 rejected" in out

    code, out, err = await run(capsys, audit.main, "--bundle", b, "--json", "--event",
                               "enrolled")
    assert code == 0, err
    enrolled = json.loads(out)
    assert sorted(e["device"] for e in enrolled) == ["dev-a", "dev-b", "dev-c", "ops-1"]
    code, out, err = await run(capsys, audit.main, "--bundle", b, "--json", "--device",
                               "dev-a", "--since", "1h")
    assert code == 0, err
    assert {e["event"] for e in json.loads(out)} == {"added", "enrolled"}
    code, out, err = await run(capsys, audit.main, "--bundle", b, "--json", "--limit", "1",
                               "--event", "operator_command")
    assert code == 0, err
    (latest,) = json.loads(out)
    assert latest["actor"] == "ops-1" and latest["detail"]["command"] == "audit.list"
    code, out, err = await run(capsys, audit.main, "--bundle", b, "--since",
                               "2000-01-01T00:00", "--event", "added")
    assert code == 0, err
    assert sum("added" in line for line in out.splitlines()) == 4


async def test_the_dispatcher_and_the_script_reach_the_same_command(
    site: Site, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = await run(capsys, fedmq_main, "fleet", "status", "--bundle",
                               str(site.bundle), "--json", "--class", "gateway")
    assert code == 0, err
    assert [r["device_id"] for r in json.loads(out)["devices"]] == ["dev-a"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "fleet_status"), "--bundle", str(site.bundle),
        "--json", "--offline", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr
    assert [r["device_id"] for r in json.loads(stdout)["devices"]] == ["dev-b"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_mistakes_give_one_line_and_a_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = Bundle(device_id="ops-1", fed="testfed", broker_host="127.0.0.1",
                    broker_port=_closed_port(), mqtt_username="ops-1", mqtt_password="pw",
                    orchestrator_key="11" * 32, enroll_secret="22" * 32, role="operator")
    path = tmp_path / "ops.json"
    path.write_text(bundle.to_json())
    cases: list[tuple[Callable[[list[str]], int], list[str], int, str]] = [
        (fleet.main, ["status", "--bundle", str(path)], 1, "cannot reach the broker"),
        (federation.main, ["status", "--bundle", str(path), "--timeout", "2"], 1,
         "cannot reach the broker"),
        (audit.main, ["--bundle", str(path)], 1, "cannot reach the broker"),
        (fleet.main, ["status", "--bundle", str(tmp_path / "nope.json")], 1,
         "cannot read the bundle"),
        (fleet.main, ["status", "--bundle", str(path), "--sort", "colour"], 2,
         "--sort 'colour'"),
        (fleet.main, ["status"], 2, "--bundle is required"),
        (fleet.main, ["restart", "--bundle", str(path)], 2, "invalid choice"),
        (audit.main, ["--bundle", str(path), "--since", "yesterday"], 2, "--since"),
        (audit.main, ["--bundle", str(path), "--limit", "0"], 2, "--limit"),
        (fleet.main, ["watch", "--bundle", str(path), "--count", "0"], 2, "--count"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cases.append((fleet.main, ["status", "--bundle", str(bad)], 1, "not a valid bundle"))
    for command, argv, want_code, want_text in cases:
        code, out, err = await run(capsys, command, *argv)
        assert (code, out) == (want_code, ""), (argv, err)
        assert len(err.strip().splitlines()) == 1 and want_text in err, (argv, err)


AGENTS = FleetSpec(devices=3, dataset="digits", split="iid", seed=0, battery_fraction=0.0,
                   time_scale=1.0, id_prefix="agent")


async def test_real_agents_appear_in_the_fleet_and_federation_views(
    make_config: Callable[..., Config], broker: MosquittoBroker, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = shard_data(AGENTS)
    config = make_config(
        model={"kind": "softmax", "n_features": 64, "n_classes": 10, "seed": 0},
        training={"epochs": 1, "batch_size": 16, "lr": 0.1, "deadline_s": 30.0},
        aggregation={"k": 2, "max_staleness": 20}, selection={"retry_after_s": 0.5},
        ops={"fleet_interval_s": 0.2})
    bundles = await provision_fleet(config, AGENTS.device_ids())
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        ops = await provision(orch.store, orch.config, "ops-1",
                              orchestrator_key=orch.public_key.hex(), role="operator")
        await broker.reload()
        path = tmp_path / "ops-1.bundle.json"
        write_private(path, ops.to_json())
        async with Fleet(bundles, data.shards, tmp_path / "agents", AGENTS,
                         agent_config=AgentConfig(heartbeat_s=0.3)):
            async with asyncio.timeout(60):
                await orch.wait_for_version(2)
            code, out, err = await run(capsys, fleet.main, "status", "--bundle", str(path),
                                       "--json")
            assert code == 0, err
            doc = json.loads(out)
            code, out, err = await run(capsys, federation.main, "status", "--bundle",
                                       str(path), "--json")
            assert code == 0, err
            fed = json.loads(out)
    rows = doc["devices"]
    assert [r["device_id"] for r in rows] == AGENTS.device_ids()
    assert all(r["online"] and r["class"] in ("mains", None) for r in rows)
    assert all(r["model_version"] is not None and r["battery_pct"] is None for r in rows)
    assert sum(r["accepted"] for r in rows) >= 4 and doc["totals"]["online"] == 3
    assert fed["version"] >= 2 and fed["ingest"]["updates"]["accepted"] >= 4
    versions = [e["version"] for e in fed["last_evaluations"]]
    assert versions == list(range(versions[0], versions[0] + len(versions)))
    assert 3 <= len(versions) <= 5 and versions[-1] >= fed["version"]
    assert all(e["updates"] == 2 for e in fed["last_evaluations"] if e["version"] > 0)
