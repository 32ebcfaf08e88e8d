"""The orchestrator's MQTT publishing keeps cancellations (Python 3.11's wait_for can drop one)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from orchestrator.link.mqtt import publish_keeping_cancellation


class _PubackClient:
    """Publishes like aiomqtt: the PUBACK is awaited through ``asyncio.wait_for``."""

    def __init__(self) -> None:
        self.puback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    async def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self.waiting.set()
        await asyncio.wait_for(self.puback, timeout=10)


async def _puback_and_cancel_together(publish: Any) -> asyncio.Task[None]:
    client = _PubackClient()
    task = asyncio.create_task(publish(client, "t", b"x"))
    await client.waiting.wait()
    client.puback.set_result(None)  # the PUBACK arrives ...
    task.cancel()  # ... in the same loop iteration as the task group's cancel
    await asyncio.wait([task])
    return task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps cancellations there")
async def test_plain_wait_for_loses_the_cancel_this_guards_against() -> None:
    async def plain(client: Any, topic: str, payload: bytes) -> None:
        await client.publish(topic, payload)

    task = await _puback_and_cancel_together(plain)
    assert not task.cancelled() and task.cancelling() == 1


async def test_a_cancel_landing_with_the_puback_is_kept() -> None:
    task = await _puback_and_cancel_together(publish_keeping_cancellation)
    assert task.cancelled()


async def test_an_uncancelled_publish_completes() -> None:
    client = _PubackClient()
    task = asyncio.create_task(publish_keeping_cancellation(client, "t", b"x"))  # type: ignore[arg-type]
    await client.waiting.wait()
    client.puback.set_result(None)
    await task

