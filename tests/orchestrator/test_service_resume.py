"""``fedmq federation resume``: an operator lifts a stop over MQTT (a signed request), audited;
real agents pick up work again, and the stopping rules count from the resume. Real Mosquitto,
real agents, the real orchestrator."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.cli import federation as federation_cli
from orchestrator.config import Config, load_config
from orchestrator.devices.commands import provision, write_private
from orchestrator.ops.client import OperatorClient, OperatorRefused
from orchestrator.service import Orchestrator
from orchestrator.store.state_keys import StateKey
from tests.support.agents import FAST, new_agent, random_data
from tests.support.service_config import config_file

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2, holdout=0.0)


SECTIONS: dict[str, dict[str, object]] = {
    "aggregation": {"k": 2, "max_staleness": 50},
    "selection": {"concurrency": 4, "retry_after_s": 0.2},
    "stopping": {"max_versions": 2},
}


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(aggregation={"k": 2, "max_staleness": 50},
                       selection={"concurrency": 4, "retry_after_s": 0.2},
                       stopping={"max_versions": 2})


async def _operator(orch: Orchestrator, broker: MosquittoBroker, path: Path) -> Path:
    bundle = await provision(orch.store, orch.config, "ops-1",
                             orchestrator_key=orch.public_key.hex(), role="operator")
    await broker.reload()
    write_private(path, bundle.to_json())
    return path


async def test_an_operator_resumes_a_stopped_federation_and_agents_train_again(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        ops_bundle = await _operator(orch, broker, tmp_path / "ops.bundle.json")
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(2)]
        await broker.reload()
        async with new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT) as a0, \
                new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT):
            async with asyncio.timeout(30):
                await orch.wait_stopped()
            stopped_at = orch.version
            assert stopped_at == 2
            await a0.wait_until(lambda a: a.activity.federation_stopped, 20)
            async with OperatorClient.open(ops_bundle, timeout_s=10) as ops:
                lifted = await ops.request("federation.resume", {"reason": "new data"})
                assert lifted["version"] == stopped_at
                assert str(lifted["stopped_for"]).startswith("max_versions")
                # the agents are told and train again; max_versions counts from the resume
                await a0.wait_until(lambda a: not a.activity.federation_stopped, 20)
                async with asyncio.timeout(30):
                    await orch.wait_for_version(stopped_at + 2)
                assert (await orch.wait_stopped()).startswith("max_versions")
                assert orch.version == stopped_at + 2
        (row,) = await orch.store.list_audit(event="resumed")
        assert row.actor == "ops-1" and row.reason == "new data"
        commands = await orch.store.list_audit(event="operator_command", actor="ops-1")
        assert "federation.resume" in [c.detail["command"] for c in commands]
        assert await orch.store.get_server_state(StateKey.STOPPED) is not None  # stopped again


async def test_resuming_a_running_federation_is_one_line(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        ops_bundle = await _operator(orch, broker, tmp_path / "ops.bundle.json")
        async with OperatorClient.open(ops_bundle, timeout_s=10) as ops:
            with pytest.raises(OperatorRefused, match="not stopped"):
                await ops.request("federation.resume")
        code = await _in_thread(federation_cli.main,
                                ["resume", "--bundle", str(ops_bundle), "--timeout", "10"])
        assert code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the federation is not stopped" in err[0], err
        assert await orch.store.list_audit(event="resumed") == []


async def _in_thread(main: Callable[[list[str]], int], argv: list[str]) -> int:
    return await asyncio.to_thread(main, argv)  # the CLI runs its own event loop


async def test_resume_on_the_box_through_the_store_while_running_and_while_down(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = config_file(tmp_path / "orchestrator.toml", broker, **SECTIONS)
    config = load_config(path)
    resume = ["resume", "--config", str(path), "--reason", "more data"]
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(2)]
        await broker.reload()
        assert await _in_thread(federation_cli.main, resume) == 1  # not stopped yet
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the federation is not stopped" in err[0], err
        async with new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT), \
                new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT):
            async with asyncio.timeout(30):
                await orch.wait_stopped()
            assert orch.version == 2
            # running: the service finds the request within a poll and lifts the stop
            assert await _in_thread(federation_cli.main, resume) == 0
            async with asyncio.timeout(30):
                await orch.wait_for_version(4)
                assert (await orch.wait_stopped()).startswith("max_versions")
    # down: the request waits in the store and is applied at the next start
    assert await _in_thread(federation_cli.main, resume) == 0
    assert "next start" in capsys.readouterr().err
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT), \
                new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT):
            async with asyncio.timeout(30):
                await orch.wait_for_version(6)
                assert (await orch.wait_stopped()).startswith("max_versions")
        requested = await orch.store.list_audit(event="resume_requested")
        resumed = await orch.store.list_audit(event="resumed")
        assert await orch.store.get_server_state(StateKey.RESUME_REQUEST) is None
    assert len(requested) == 2 and len(resumed) == 2
    assert all(r.actor.startswith("cli") and r.reason == "more data"
               for r in requested + resumed)
