"""The broker supervisor (``MosquittoBroker``): finding the binary, start failures surfaced and
cleaned up, private files, kept accounts, restarts that keep the port and queued messages."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.broker import (
    DEFAULT_ACL,
    BrokerError,
    MosquittoBroker,
    PasswordFile,
    find_mosquitto,
    read_pid_file,
)

MqttClientFactory = Callable[..., aiomqtt.Client]


def test_missing_binary_names_the_install_command() -> None:
    with pytest.raises(BrokerError, match="apt-get install -y mosquitto"):
        find_mosquitto(path="", fallbacks=())


@pytest.mark.integration  # starts a Mosquitto that exits
async def test_start_failure_surfaces_the_broker_log(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, listener_extra="no_such_option 1", startup_timeout=5)
    with pytest.raises(BrokerError, match="no_such_option"):
        await broker.start()
    assert not broker.running


@pytest.mark.integration  # starts a Mosquitto that exits
async def test_failed_start_leaves_no_process_or_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(BrokerError, match="no_such_option"):
        async with MosquittoBroker(listener_extra="no_such_option 1", startup_timeout=5):
            pass
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


@pytest.mark.integration  # starts a Mosquitto that exits
async def test_port_held_by_another_process_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        broker = MosquittoBroker(tmp_path, port=holder.getsockname()[1], startup_timeout=5)
        with pytest.raises(BrokerError, match="exited"):
            await broker.start()


@pytest.mark.integration  # MosquittoBroker directly
async def test_temporary_workdir_is_removed_and_files_are_private() -> None:
    async with MosquittoBroker(users={"dev-a": "pw"}) as broker:
        workdir = broker.workdir
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert read_pid_file(broker.pid_file) == broker.pid
        assert broker.acl_file.read_bytes() == DEFAULT_ACL.read_bytes()
        for private in (broker.password_file, broker.acl_file):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert PasswordFile(broker.password_file).users() == ["dev-a", "orchestrator"]
        assert PasswordFile(broker.password_file).verify(
            "orchestrator", broker.orchestrator_password
        )
    assert not broker.running and broker.pid is None
    assert not workdir.exists()


@pytest.mark.integration  # MosquittoBroker directly
async def test_accounts_already_in_the_workdir_are_kept(
    tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    await asyncio.to_thread(PasswordFile(workdir / "passwd").set, "provisioned", "pw")
    async with MosquittoBroker(workdir, users={"dev-a": "pw-a"}) as broker:
        users = await asyncio.to_thread(PasswordFile(broker.password_file).users)
        assert users == ["provisioned", "dev-a", "orchestrator"]
        async with mqtt_client(broker, "provisioned", "pw"):
            pass


def _persistent(broker: MosquittoBroker, mqtt_client: MqttClientFactory) -> aiomqtt.Client:
    expiry = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    expiry.SessionExpiryInterval = 3600
    return mqtt_client(broker, "orchestrator", identifier="orch-persistent",
                       clean_start=False, properties=expiry)


async def _drain(client: aiomqtt.Client, count: int) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(10):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append(message.payload)
            if len(got) == count:
                return got
    return got


async def test_restart_keeps_port_and_queued_messages_of_persistent_session(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = f"t{uuid.uuid4().hex[:10]}"
    await broker.add_user("dev-a", "pw")
    port = broker.port
    async with _persistent(broker, mqtt_client) as orch:
        await orch.subscribe(f"fl/{fed}/up/#", qos=1)
    async with mqtt_client(broker, "dev-a") as dev:  # the orchestrator is away
        for i in range(500):
            await dev.publish(f"fl/{fed}/up/dev-a/updates", str(i).encode(), qos=1)
    await broker.stop()
    assert not broker.running
    await broker.start()
    assert broker.port == port
    async with _persistent(broker, mqtt_client) as orch:
        got = await _drain(orch, 500)
    assert got == [str(i).encode() for i in range(500)]


async def test_kill_then_start_again(broker: MosquittoBroker,
                                     mqtt_client: MqttClientFactory) -> None:
    pid = broker.pid
    await broker.kill()
    assert not broker.running and broker.pid is None
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(broker, "orchestrator"):
            pass
    await broker.start()
    assert broker.running and broker.pid != pid
    async with mqtt_client(broker, "orchestrator"):
        pass
    with pytest.raises(BrokerError, match="already running"):
        await broker.start()
