"""The production broker config (``broker_config/prod.conf``) end to end over TLS.

Certificates are made for the test with the ``openssl`` CLI: a CA, a server certificate for
127.0.0.1, a client certificate, and a rogue CA with its own client certificate. With the
password variant, the orchestrator and a real agent (``python -m edge_agent run`` with a TLS
bundle) federate over TLS, while a wrong password, a client that does not trust the server's
CA, and plain MQTT on the TLS port are all refused. With the client-certificate variant, only
a certificate from the site's CA gets in; with it configured on the orchestrator
(``broker.client_certificates``), ``fedmq device add`` issues each device a certificate that
its bundle carries, and a real agent and the operator client federate with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import ssl
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest

from edge_agent.tls import tls_context
from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config, parse_config
from orchestrator.devices.commands import provision
from orchestrator.ops.client import OperatorClient
from orchestrator.service import Orchestrator
from schemas import Bundle
from tests.support.tls import make_certs, prod_template

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
    pytest.mark.integration,  # a Mosquitto started on prod.conf
]

@pytest.fixture
async def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    await asyncio.to_thread(make_certs, directory)
    return directory


@pytest.fixture
async def tls_broker(tmp_path: Path, certs: Path) -> AsyncIterator[MosquittoBroker]:
    template = tmp_path / "prod.conf.in"
    template.write_text(prod_template(certs, client_certificates=False))
    async with MosquittoBroker(tmp_path / "broker", template=template) as broker:
        yield broker


def _context(certs: Path, ca: str = "ca", client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / f"{ca}.crt"))
    if client is not None:
        context.load_cert_chain(certs / f"{client}.crt", certs / f"{client}.key")
    return context


def _client(broker: MosquittoBroker, username: str | None, password: str | None,
            tls: ssl.SSLContext | None) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, username=username, password=password,
                          identifier=f"tls-{uuid.uuid4().hex[:8]}", tls_context=tls,
                          protocol=aiomqtt.ProtocolVersion.V5, timeout=5)


async def _handshake(broker: MosquittoBroker, context: ssl.SSLContext) -> None:
    """A TLS handshake and one MQTT round trip (a CONNECT without credentials: the broker
    must answer or hang up; raw sockets, so a failed handshake leaves nothing open)."""
    reader, writer = await asyncio.open_connection(broker.host, broker.port, ssl=context)
    try:
        # TLS 1.2 lets the server reject a client certificate after the client's Finished:
        # the refusal shows on the first read
        writer.write(bytes.fromhex("100d00044d5154540402003c000178"))
        await writer.drain()
        async with asyncio.timeout(20):
            answer = await reader.read(4)
        if not answer:
            raise ConnectionResetError("the broker hung up")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _config(tmp_path: Path, broker: MosquittoBroker, certs: Path, *, ca: str = "ca",
            name: str = "data", **tls: Any) -> Config:
    return parse_config({
        "federation": {"id": "tlsfed", "data_dir": str(tmp_path / name), "heartbeat_s": 0.5},
        "broker": {"embedded": False, "host": "127.0.0.1", "port": broker.port,
                   "password": broker.orchestrator_password,
                   "password_file": str(broker.password_file), "tls": True,
                   "ca_file": str(certs / f"{ca}.crt"), **tls},
        "model": {"kind": "softmax", "n_features": 8, "n_classes": 3},
        "training": {"min_battery_pct": 0.0, "max_thermal": "critical", "codec": "float32"},
        "aggregation": {"k": 1},
        "selection": {"retry_after_s": 0.3},
    }, base_dir=tmp_path)


async def _agent_sends_an_update(tmp_path: Path, orch: Orchestrator, bundle: Bundle) -> str:
    """Run a real agent (``python -m edge_agent``) on ``bundle`` until its update made
    version 1; returns its log."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, X=rng.standard_normal((60, 8)).astype(np.float32),
             y=rng.integers(0, 3, 60))
    bundle_path = tmp_path / "bundle.json"
    bundle_path.write_text(bundle.to_json())
    log = tmp_path / "agent.log"
    with log.open("wb") as err:
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent", "run", "--bundle", str(bundle_path),
            "--data", str(data), "--probe", "simulated", "--heartbeat", "0.3",
            stdout=asyncio.subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        async with asyncio.timeout(60):
            await orch.wait_for_version(1)
        rows = await orch.store.ledger(sender=bundle.device_id)
        assert rows and rows[0].status in ("buffered", "applied"), log.read_text()
    finally:
        agent.terminate()
        assert await agent.wait() == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "connected to 127.0.0.1" in text
    return text


async def test_orchestrator_and_agent_federate_over_tls_and_strangers_are_refused(
    tmp_path: Path, tls_broker: MosquittoBroker, certs: Path,
) -> None:
    broker = tls_broker
    config = _config(tmp_path, broker, certs)
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        bundle = await provision(orch.store, config, "dev-a",
                                 orchestrator_key=orch.public_key.hex())
        await broker.reload()
        # the bundle carries the CA itself, not a path on this host
        assert bundle.tls and bundle.ca_file == "" and not bundle.client_cert_pem
        assert bundle.ca_pem == (certs / "ca.crt").read_text()
        await _agent_sends_an_update(tmp_path, orch, bundle)

        # a bundle of another site's CA does not trust this broker
        rogue = dataclasses.replace(bundle, ca_pem=(certs / "rogue-ca.crt").read_text())
        rogue_context = tls_context(rogue, tmp_path / "rogue.db")
        assert rogue_context is not None
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(broker, rogue_context)

        # a wrong password over TLS: the broker says "not authorised"
        with pytest.raises(aiomqtt.MqttCodeError):
            async with _client(broker, "dev-a", "wrong", _context(certs)):
                pass
        # a client that does not trust the site's CA never completes the handshake
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(broker, _context(certs, ca="rogue-ca"))
        # plain MQTT on the TLS port, with valid credentials: no session
        with pytest.raises(aiomqtt.MqttError):
            async with _client(broker, "dev-a", bundle.mqtt_password, None):
                pass
        # the right password and CA still work (the refusals were for the stated reasons)
        async with _client(broker, "dev-a", bundle.mqtt_password, _context(certs)):
            pass


async def test_client_certificate_variant_admits_only_the_sites_certificates(
    tmp_path: Path, certs: Path,
) -> None:
    template = tmp_path / "prod-certs.conf.in"
    template.write_text(prod_template(certs, client_certificates=True))
    async with MosquittoBroker(tmp_path / "broker", template=template) as broker:
        async with _client(broker, None, None, _context(certs, client="client")) as client:
            # the certificate's CN is the MQTT username: the %u ACL confines it as usual
            await client.publish("fl/f/up/dev-a/status", b"hello", qos=1)
        await _handshake(broker, _context(certs, client="client"))
        # no client certificate, or one from another CA: the broker ends the handshake
        for context in (_context(certs), _context(certs, client="rogue-client")):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _handshake(broker, context)


async def test_device_add_issues_client_certificates_that_agent_and_operator_present(
    tmp_path: Path, certs: Path,
) -> None:
    template = tmp_path / "prod-certs.conf.in"
    template.write_text(prod_template(certs, client_certificates=True))
    async with MosquittoBroker(tmp_path / "broker", template=template) as broker:
        config = _config(tmp_path, broker, certs, client_certificates=True,
                         ca_key_file=str(certs / "ca.key"))
        # the orchestrator issues itself a certificate (CN orchestrator) and connects with it
        async with Orchestrator(config, store_synchronous="NORMAL") as orch:
            assert (config.federation.tls_dir / "orchestrator.crt").exists()
            key = orch.public_key.hex()
            bundle = await provision(orch.store, config, "dev-a", orchestrator_key=key)
            await broker.reload()
            assert bundle.client_cert_pem and bundle.client_key_pem
            assert bundle.ca_pem == (certs / "ca.crt").read_text()
            await _agent_sends_an_update(tmp_path, orch, bundle)

            # the operator CLI's client connects with its own bundle's certificate
            ops_bundle = await provision(orch.store, config, "ops-1", orchestrator_key=key,
                                         role="operator")
            ops_path = tmp_path / "ops-1.bundle.json"
            ops_path.write_text(ops_bundle.to_json())
            async with OperatorClient.open(ops_path, timeout_s=10) as ops:
                assert (await ops.request("ping"))["pong"] is True

            # without a certificate the device is refused, its password and CA notwithstanding
            without = dataclasses.replace(bundle, client_cert_pem="", client_key_pem="")
            plain = tls_context(without, tmp_path / "without.db")
            assert plain is not None
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _handshake(broker, plain)
            with pytest.raises(aiomqtt.MqttError):
                async with _client(broker, "dev-a", bundle.mqtt_password, plain):
                    pass

            # a bundle made by a federation of another CA: neither side accepts the other,
            # though its password entry is valid on this broker
            rogue_config = _config(tmp_path, broker, certs, ca="rogue-ca", name="rogue",
                                   client_certificates=True,
                                   ca_key_file=str(certs / "rogue-ca.key"))
            rogue = await provision(orch.store, rogue_config, "dev-b", orchestrator_key=key)
            await broker.reload()
            rogue_context = tls_context(rogue, tmp_path / "rogue.db")
            assert rogue_context is not None
            with pytest.raises(ssl.SSLCertVerificationError):
                await _handshake(broker, rogue_context)
            trusting = tls_context(dataclasses.replace(rogue, ca_pem=bundle.ca_pem),
                                   tmp_path / "trusting.db")
            assert trusting is not None
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await _handshake(broker, trusting)
            # the same handshake with the device's own bundle gets an answer
            own = tls_context(bundle, tmp_path / "own.db")
            assert own is not None
            await _handshake(broker, own)
