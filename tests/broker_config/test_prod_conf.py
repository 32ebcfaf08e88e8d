"""``broker_config/prod.conf`` serves MQTT over TLS with passwords, and only over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker
from tests.support.tls import make_certs, prod_template

MqttClientFactory = Callable[..., aiomqtt.Client]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.integration  # a Mosquitto on prod.conf
async def test_prod_config_serves_tls_with_passwords(
    tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    await asyncio.to_thread(make_certs, certs, clients=False)
    template = tmp_path / "prod.conf.in"
    template.write_text(prod_template(certs))
    tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    async with MosquittoBroker(tmp_path / "broker", template=template,
                               users={"dev-a": "pw"}) as broker:
        async with mqtt_client(broker, "dev-a", tls_context=tls) as dev:
            await dev.publish("fl/f/up/dev-a/status", b"over tls", qos=1)
        with pytest.raises(aiomqtt.MqttCodeError):
            async with mqtt_client(broker, "dev-a", "wrong", tls_context=tls):
                pass
        # Plain MQTT on the TLS port: a plain listener would answer this CONNECT with a
        # CONNACK (b"\x20\x02\x00\x05", not authorised); the TLS listener hangs up.
        reader, writer = await asyncio.open_connection(broker.host, broker.port)
        try:
            writer.write(bytes.fromhex("100d00044d5154540402003c000178"))
            await writer.drain()
            async with asyncio.timeout(20):
                try:
                    answer = await reader.read(4)
                except ConnectionResetError:
                    answer = b""
            assert answer == b""
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
