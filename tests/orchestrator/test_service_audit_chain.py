"""The audit chain of a running service: every writer (the service's tasks, a junk-sending
device's coalesced rejections, a CLI on the same store while the service runs) extends one
chain that ``fedmq audit verify`` accepts, whose head a later check still finds, and in which
an edited row is named. Real Mosquitto, real agents, the real orchestrator."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.cli import audit as audit_cli
from orchestrator.cli import federation as federation_cli
from orchestrator.config import load_config
from orchestrator.devices.commands import provision
from orchestrator.service import Orchestrator
from schemas.topics import Topics, UpKind
from tests.support.agents import FAST, new_agent, random_data
from tests.support.service_config import config_file

AGENT = FAST


def _cli(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int],
         *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines() + err.splitlines()


async def test_a_running_services_writers_keep_one_chain_and_an_edit_is_named(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    mqtt_client: Callable[..., aiomqtt.Client],
) -> None:
    path = config_file(tmp_path / "orchestrator.toml", broker,
                       aggregation={"k": 2, "max_staleness": 50},
                       selection={"concurrency": 4, "retry_after_s": 0.2},
                       stopping={"max_versions": 2})
    config = load_config(path)
    cfg = str(path)
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(3)]
        await broker.reload()
        async with new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT), \
                new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT):
            # a stolen credential sends junk: audited as rejections, coalesced
            async with mqtt_client(broker, "dev-2", bundles[2].mqtt_password) as raw:
                for _ in range(20):
                    await raw.publish(Topics(config.federation.id).up("dev-2", UpKind.UPDATES),
                                      b"junk", qos=1)
            async with asyncio.timeout(30):
                await orch.wait_stopped()
            # a second process's writer on the same chain while the service writes
            code, lines = await asyncio.to_thread(
                _cli, capsys, federation_cli.main, "resume", "--config", cfg)
            assert code == 0, lines
            async with asyncio.timeout(30):
                await orch.wait_for_version(4)
                await orch.wait_stopped()
            code, lines = await asyncio.to_thread(
                _cli, capsys, audit_cli.main, "verify", "--config", cfg)
            assert code == 0 and len(lines) == 1 and " OK: " in lines[0], lines
            head = lines[0].rsplit(" ", 1)[1]
        events = {r.event for r in await orch.store.list_audit()}
    assert {"enrolled", "rejected", "stopped", "resume_requested", "resumed"} <= events, events
    # after the shutdown's own rows the chain still holds the recorded head
    code, lines = await asyncio.to_thread(
        _cli, capsys, audit_cli.main, "verify", "--config", cfg, "--head", head)
    assert code == 0, lines
    db = config.federation.store_path
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        (row,) = conn.execute("SELECT id FROM audit WHERE event = 'resumed' LIMIT 1").fetchall()
        conn.execute("UPDATE audit SET reason = 'nothing happened' WHERE id = ?", row)
    code, lines = await asyncio.to_thread(
        _cli, capsys, audit_cli.main, "verify", "--config", cfg)
    assert code == 1 and len(lines) == 1, lines
    assert f"BROKEN: row {row[0]}: contents do not match" in lines[0], lines
