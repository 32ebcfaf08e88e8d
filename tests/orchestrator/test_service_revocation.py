"""Revocation that reaches the device: a real Mosquitto, a real agent, the real orchestrator.

``revoke`` (what ``fedmq device revoke`` runs) marks the device; the service, on its next
registry poll (a fake clock), sends a retained, signed ``Control(revoke)``; the agent writes
its tombstone, destroys key and outbox and exits; its confirming status makes the service
remove the broker credential (audited) — or the grace period does, for a device that never
answers. A restarted agent refuses at once, and the broker refuses the old credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from nacl.signing import SigningKey

from edge_agent import cli as agent_cli
from edge_agent.agent import Agent
from edge_agent.data import LocalData, load_local_data
from edge_agent.errors import RevokedError
from orchestrator.broker import MosquittoBroker, PasswordFile
from orchestrator.config import Config
from orchestrator.devices.commands import provision, revoke
from orchestrator.service import Orchestrator
from schemas import AgentState, Bundle, Control, ControlAction, EnrollStatus, Status
from tests.support.agents import FAST, new_agent
from tests.support.clock import FakeClock
from tests.support.sim_device import SimDevice
from tests.support.waiting import until

GRACE_S = 60.0
AGENT = dataclasses.replace(FAST, exit_on_revoke=True, holdout=0.0)

POLLS = ("registry",)
"""The registry poll sends the orders and removes credentials: time moves only while it
sleeps, so each poll runs at its own time however slow the machine."""


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "data.npz"
    np.savez(path, X=rng.normal(size=(40, 8)).astype(np.float32),
             y=rng.integers(0, 3, size=40).astype(np.int64))
    return path


@pytest.fixture
def data(data_path: Path) -> LocalData:
    return load_local_data(data_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def orch(make_config: Callable[..., Config], clock: FakeClock
               ) -> AsyncIterator[Orchestrator]:
    config = make_config(federation={"revoke_grace_s": GRACE_S})
    async with Orchestrator(config, store_synchronous="NORMAL", clock=clock) as service:
        yield service


async def _enrolled(orch: Orchestrator, broker: MosquittoBroker, device_id: str
                    ) -> Bundle:
    bundle = await provision(orch.store, orch.config, device_id,
                             orchestrator_key=orch.public_key.hex())
    await broker.reload()
    return bundle


async def _ready(agent: Agent) -> None:
    await agent.wait_until(lambda a: a.enrollment is not None
                           and a.enrollment.status is EnrollStatus.ACTIVE
                           and a.session.connected, 15)


async def _connects(broker: MosquittoBroker, bundle: Bundle) -> bool:
    try:
        async with aiomqtt.Client(broker.host, broker.port, username=bundle.mqtt_username,
                                  password=bundle.mqtt_password, identifier="raw-probe",
                                  protocol=aiomqtt.ProtocolVersion.V5, timeout=5):
            return True
    except aiomqtt.MqttError:
        return False


def _has_credential(broker: MosquittoBroker, device_id: str) -> bool:
    return device_id in PasswordFile(broker.password_file).users()


async def _removed(orch: Orchestrator, device_id: str) -> list[str | None]:
    rows = await orch.store.list_audit(device=device_id, event="credential_removed")
    return [r.reason for r in rows]


async def _until_removed(orch: Orchestrator, broker: MosquittoBroker, device_id: str
                         ) -> list[str | None]:
    """Wait for the credential to go and its audit row to land; the row's reasons."""
    await until(lambda: not _has_credential(broker, device_id), within=10)
    async with asyncio.timeout(10):
        # polled: the audit row is in the store, with no event to wait on
        while not (reasons := await _removed(orch, device_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return reasons


def _state_bytes(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (state, state.with_name(state.name + "-wal"))
                    if p.exists())


async def test_a_revoked_running_agent_is_told_destroys_its_secrets_and_stays_down(
    orch: Orchestrator, broker: MosquittoBroker, clock: FakeClock, data: LocalData,
    data_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = await _enrolled(orch, broker, "dev-r")
    state = tmp_path / "agent" / "dev-r.agent.db"
    async with new_agent(bundle, data, state, AGENT) as agent:
        await _ready(agent)
        seed = bytes(agent.local_state.signing_key)
        # a pending update the orchestrator never acks (it cannot parse it)
        await agent.outbox.put(10_000, b"pending update", created_ms=clock.wall_ms())
        assert len(agent.outbox) == 1 and seed in _state_bytes(state)

        await revoke(orch.store, orch.config, "dev-r", reason="stolen")
        assert _has_credential(broker, "dev-r")  # kept until the device has been told
        await clock.advance(1.0, wait_for=POLLS)  # the registry poll: Control(revoke) goes out
        assert await agent.run_until() == "revoked"
        assert agent.activity.revoked == "stolen"
    assert orch.counters["revoke.sent"] == 1

    # the agent's goodbye confirms: the credential goes without waiting for the grace period
    assert await _until_removed(orch, broker, "dev-r") == ["confirmed"]
    await broker.reload()
    assert not await _connects(broker, bundle)

    stone = tmp_path / "agent" / "dev-r.revoked"
    assert "stolen" in stone.read_text()
    assert seed not in _state_bytes(state)  # key bytes overwritten, not just unlinked
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM meta WHERE key = 'signing_key'"
                          ).fetchone() == (0,)

    with pytest.raises(RevokedError, match=r"device dev-r was revoked by the orchestrator at "
                                            r"\d{4}-\d\d-\d\dT[\d:]+Z: stolen"):
        async with new_agent(bundle, data, state, AGENT):
            pass
    # as a supervisor would restart it: exit status 1 and one line, before any connection
    bundle_file = tmp_path / "dev-r.bundle.json"
    bundle_file.write_text(bundle.to_json())
    connects = broker.log_text().count("New client connected")
    code = agent_cli.main(["run", "--bundle", str(bundle_file), "--data", str(data_path),
                           "--state", str(state)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("fedmq agent: device dev-r was revoked by the orchestrator at ")
    assert broker.log_text().count("New client connected") == connects


async def test_an_offline_device_gets_the_order_when_it_returns_within_the_grace_period(
    orch: Orchestrator, broker: MosquittoBroker, clock: FakeClock, data: LocalData,
    tmp_path: Path,
) -> None:
    bundle = await _enrolled(orch, broker, "dev-o")
    state = tmp_path / "dev-o.agent.db"
    async with new_agent(bundle, data, state, AGENT) as agent:
        await _ready(agent)
    await revoke(orch.store, orch.config, "dev-o", reason="retired")
    await clock.advance(1.0, wait_for=POLLS)
    await until(lambda: orch.counters["revoke.sent"] == 1)
    await clock.advance(GRACE_S / 2, wait_for=POLLS)
    assert _has_credential(broker, "dev-o") and await _removed(orch, "dev-o") == []

    async with new_agent(bundle, data, state, AGENT) as agent:  # back: the retained order
        assert await agent.run_until() == "revoked"
    assert await _until_removed(orch, broker, "dev-o") == ["confirmed"]
    assert (tmp_path / "dev-o.revoked").exists()


async def test_a_device_that_never_answers_loses_its_credential_after_the_grace_period(
    orch: Orchestrator, broker: MosquittoBroker, clock: FakeClock, data: LocalData,
    tmp_path: Path,
) -> None:
    bundle = await _enrolled(orch, broker, "dev-g")
    async with new_agent(bundle, data, tmp_path / "dev-g.agent.db", AGENT) as agent:
        await _ready(agent)
    await revoke(orch.store, orch.config, "dev-g")
    await clock.advance(1.0, wait_for=POLLS)
    await until(lambda: orch.counters["revoke.sent"] == 1)
    await clock.advance(GRACE_S - 2.0, wait_for=POLLS)
    assert _has_credential(broker, "dev-g")  # fake time short of the grace period
    for _ in range(20):  # on: a poll at a time, until one finds the grace period over
        await clock.advance(1.0, wait_for=POLLS)
        with contextlib.suppress(TimeoutError):
            await until(lambda: not _has_credential(broker, "dev-g"), within=0.5)
            break
    assert await _until_removed(orch, broker, "dev-g") == ["grace_expired"]
    (row,) = await orch.store.list_audit(device="dev-g", event="credential_removed")
    assert row.detail["grace_s"] == GRACE_S and row.actor == "orchestrator"
    assert row.ts_ms - row.detail["sent_ms"] >= GRACE_S * 1000
    await broker.reload()
    assert not await _connects(broker, bundle)


async def test_revoke_now_removes_the_credential_at_once(
    orch: Orchestrator, broker: MosquittoBroker, clock: FakeClock,
) -> None:
    bundle = await _enrolled(orch, broker, "dev-n")
    await revoke(orch.store, orch.config, "dev-n", immediate=True)
    assert not _has_credential(broker, "dev-n")
    assert await _removed(orch, "dev-n") == ["immediate"]
    await broker.reload()
    assert not await _connects(broker, bundle)
    await clock.advance(1.0, wait_for=POLLS)  # nothing left for the service to do
    await clock.advance(GRACE_S, wait_for=POLLS)
    assert orch.counters["revoke.sent"] == 0 and await _removed(orch, "dev-n") == ["immediate"]


async def test_only_a_confirmation_signed_with_the_devices_key_ends_the_grace_period(
    orch: Orchestrator, broker: MosquittoBroker, clock: FakeClock,
    devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    dev = await devices(orch, "dev-h")
    await revoke(orch.store, orch.config, "dev-h")
    await clock.advance(1.0, wait_for=POLLS)
    order = await dev.next("control")
    assert isinstance(order, Control) and order.action is ControlAction.REVOKE
    # forged by someone else's key, or signed right but not a confirmation: refused
    _, forged = dev.sign(Status(state=AgentState.OFFLINE, reason="revoked"),
                         key=SigningKey.generate())
    await dev.publish("status", forged)
    await dev.status(state=AgentState.IDLE)
    await until(lambda: orch.counters["status.rejected.bad_signature"] == 1
                and orch.counters["status.rejected.revoked"] == 1)
    assert _has_credential(broker, "dev-h") and orch.counters["revoke.receipts"] == 0
    await dev.status(state=AgentState.STOPPED, reason="revoked")
    assert await _until_removed(orch, broker, "dev-h") == ["confirmed"]
