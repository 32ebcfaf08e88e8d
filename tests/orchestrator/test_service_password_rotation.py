"""Broker password rotation end to end: real agents, the real orchestrator, a real Mosquitto.

``fedmq device rotate ID --password`` records the request; the service offers a new password
sealed to the device; the agent keeps it and confirms; the broker's entry is switched (the
fixture's reload stands in for the service's SIGHUP, which needs a pid file); the agent
reconnects with the new password and trains on; the old password is refused. A device away
for the whole offer gets it when it returns; one away past the grace is refused by the broker
with one clear error line.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from edge_agent.agent import Agent
from orchestrator.broker import MosquittoBroker, PasswordFile
from orchestrator.config import Config
from orchestrator.devices.commands import provision
from orchestrator.devices.passwords import PASSWORD_ROTATED, request_password_rotation
from orchestrator.service import Orchestrator
from schemas import Bundle
from tests.support.agents import FAST, new_agent, random_data
from tests.support.ledger import no_update_lost_or_counted_twice
from tests.support.waiting import until

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2, holdout=0.0, auth_retry_s=0.5)


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(aggregation={"k": 2, "max_staleness": 50},
                       selection={"concurrency": 4, "retry_after_s": 0.2})


async def _connects(broker: MosquittoBroker, user: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(broker.host, broker.port, username=user, password=password,
                                  identifier=user, protocol=aiomqtt.ProtocolVersion.V5,
                                  timeout=5):
            return True
    except aiomqtt.MqttError:
        return False


async def _request(orch: Orchestrator, config: Config, device: str) -> None:
    await request_password_rotation(orch.store, device, now_ms=int(time.time() * 1000),
                                    managed=config.password_file is not None)


async def _switched(orch: Orchestrator, broker: MosquittoBroker, device: str,
                    reason: str) -> None:
    """Wait for the service's switch of ``device``'s entry, then reload the broker."""
    await until(lambda: orch.counters[f"password.{reason}"] >= 1, 20)
    (row,) = await orch.store.list_audit(device=device, event=PASSWORD_ROTATED)
    assert row.reason == reason
    await broker.reload()


def _login(agent: Agent) -> tuple[str, str | None]:
    login = agent.rotator.login
    assert login is not None
    return login.current, login.next


async def test_a_password_rotated_while_training_loses_no_update_and_retires_the_old(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundles = [await provision(orch.store, config, f"dev-{i}",
                                   orchestrator_key=orch.public_key.hex()) for i in range(2)]
        await broker.reload()
        async with new_agent(bundles[0], random_data(0), tmp_path / "a0.db", AGENT) as a0, \
                new_agent(bundles[1], random_data(1), tmp_path / "a1.db", AGENT) as a1:
            await orch.wait_for_version(1)
            old = bundles[0].mqtt_password
            await _request(orch, config, "dev-0")
            await a0.wait_until(lambda a: a.stats.password_receipts >= 1, 20)
            await _switched(orch, broker, "dev-0", "confirmed")
            # dropped by the reload, back with the new password, told to forget the old
            await a0.wait_until(lambda a: _login(a)[1] is None and _login(a)[0] != old
                                and a.session.connected, 20)
            new = _login(a0)[0]
            assert PasswordFile(broker.password_file).verify("dev-0", new)
            version, built = orch.version, a0.stats.updates_built
            await orch.wait_for_version(version + 2)
            await a0.wait_until(lambda a: a.stats.updates_built > built, 30)
            a0.stop()
            a1.stop()
            await a0.run_until()
            await a1.run_until()
            for agent in (a0, a1):
                await no_update_lost_or_counted_twice(orch, agent)
        assert not await _connects(broker, "dev-0", old)
        assert await _connects(broker, "dev-1", bundles[1].mqtt_password)  # the other keeps


async def test_an_agent_away_during_the_offer_gets_it_when_it_returns(
    config: Config, broker: MosquittoBroker, tmp_path: Path,
) -> None:
    state = tmp_path / "away.db"
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundle = await provision(orch.store, config, "dev-away",
                                 orchestrator_key=orch.public_key.hex())
        await broker.reload()
        async with new_agent(bundle, random_data(2), state, AGENT) as agent:
            await agent.wait_until(lambda a: a.enrollment is not None and a.session.connected,
                                   15)
        await _request(orch, config, "dev-away")
        await until(lambda: orch.counters["password.offered"] >= 1, 20)
        # the offer waits in the device's persistent session; the old password still works
        async with new_agent(bundle, random_data(2), state, AGENT) as agent:
            await agent.wait_until(lambda a: a.stats.password_receipts >= 1, 20)
            await _switched(orch, broker, "dev-away", "confirmed")
            await agent.wait_until(lambda a: _login(a)[1] is None and a.session.connected, 20)
            await orch.wait_for_version(1)
        # the new password is durable: a restarted agent connects with it at once
        async with new_agent(bundle, random_data(2), state, AGENT) as agent:
            await agent.wait_until(lambda a: a.session.connected, 15)
            assert _login(agent)[0] != bundle.mqtt_password
    assert not await _connects(broker, "dev-away", bundle.mqtt_password)


async def test_an_agent_away_past_the_grace_is_refused_with_one_clear_line(
    make_config: Callable[..., Config], broker: MosquittoBroker, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = make_config(federation={"password_grace_s": 0.5})
    state = tmp_path / "late.db"
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundle: Bundle = await provision(orch.store, config, "dev-late",
                                         orchestrator_key=orch.public_key.hex())
        await broker.reload()
        async with new_agent(bundle, random_data(3), state, AGENT) as agent:
            await agent.wait_until(lambda a: a.enrollment is not None and a.session.connected,
                                   15)
        await _request(orch, config, "dev-late")
        await _switched(orch, broker, "dev-late", "grace_expired")
    with caplog.at_level(logging.ERROR):
        async with new_agent(bundle, random_data(3), state, AGENT) as agent:
            await until(lambda: agent.session.refused_credentials, 20)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
             and "refused this device's credentials" in r.getMessage()]
    assert len(lines) == 1, lines
