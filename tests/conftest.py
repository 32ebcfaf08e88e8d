"""Shared fixtures: a real Mosquitto per test and MQTT clients configured for it.

    async def test_x(broker: MosquittoBroker, mqtt_client: Callable[..., aiomqtt.Client]):
        await broker.add_user("dev-a", "pw")
        async with mqtt_client(broker, "dev-a", "pw") as client:
            ...

Subfolders add their own fixtures in their own conftest.py files.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    """A running Mosquitto on a free 127.0.0.1 port, configured from broker_config/.

    Its files live in ``tmp_path / "broker"``; the ``orchestrator`` account exists
    (``broker.orchestrator_password``); add devices and operators with
    ``await broker.add_user(name, password)``.
    """
    async with MosquittoBroker(tmp_path / "broker") as running:
        yield running


def _make_client(
    broker: MosquittoBroker, username: str, password: str | None = None, **kwargs: Any
) -> aiomqtt.Client:
    if password is None:
        try:
            password = broker.credentials[username]
        except KeyError:
            raise KeyError(f"broker has no account {username!r}; pass its password") from None
    kwargs.setdefault("identifier", f"{username}-{uuid.uuid4().hex[:10]}")
    kwargs.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
    return aiomqtt.Client(
        broker.host, broker.port, username=username, password=password, **kwargs
    )


@pytest.fixture
def mqtt_client() -> Callable[..., aiomqtt.Client]:
    """Factory ``mqtt_client(broker, username, password=None, **kwargs) -> aiomqtt.Client``.

    MQTT 5 and a unique ``identifier`` unless given in ``kwargs``; ``password`` defaults to
    the one the broker holds for ``username``. The client is not connected: use it as an
    async context manager.
    """
    return _make_client
