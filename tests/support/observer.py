"""A read-only spy account on a test broker.

The broker replaces every client id by its username (``use_username_as_clientid``), so a
test that subscribed as ``orchestrator`` would now close the orchestrator's own session.
An observer is a separate account that may read the whole ``fl/#`` namespace and write
nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt

from orchestrator.broker import MosquittoBroker


async def add_observer(broker: MosquittoBroker) -> tuple[str, str]:
    """Create a fresh ``observer-xxxx`` account allowed to read ``fl/#``; returns
    ``(username, password)``."""
    name = f"observer-{uuid.uuid4().hex[:8]}"

    def grant() -> None:
        with broker.acl_file.open("a", encoding="utf-8") as fh:
            fh.write(f"\nuser {name}\ntopic read fl/#\n")

    await asyncio.to_thread(grant)
    return name, await broker.add_user(name)   # add_user reloads: the ACL line is read too


@asynccontextmanager
async def observer(broker: MosquittoBroker, **kwargs: Any) -> AsyncIterator[aiomqtt.Client]:
    """A connected MQTT 5 client of a fresh observer account."""
    name, password = await add_observer(broker)
    kwargs.setdefault("protocol", aiomqtt.ProtocolVersion.V5)
    async with aiomqtt.Client(broker.host, broker.port, username=name, password=password,
                              identifier=name, **kwargs) as client:
        yield client
