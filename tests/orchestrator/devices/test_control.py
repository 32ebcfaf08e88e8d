"""A handler that fails on one message is counted and logged; its lane goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from orchestrator.devices.control import ControlItem, ControlLanes
from schemas.errors import FedmqError, Reason


class _Flaky:
    def __init__(self) -> None:
        self.handled: list[bytes] = []

    async def handle(self, device_id: str, payload: bytes, received_ms: int) -> None:
        if payload == b"bug":
            raise TypeError("not JSON serializable")
        if payload == b"junk":
            raise FedmqError(Reason.MALFORMED, "junk")
        self.handled.append(payload)


async def test_a_failing_message_does_not_stop_its_lane(caplog: pytest.LogCaptureFixture) -> None:
    counters: Counter[str] = Counter()
    handler = _Flaky()
    lanes = ControlLanes({"status": handler}, counters=counters, queue_size=8, lanes=1)
    task = asyncio.create_task(lanes.run())
    try:
        for payload in (b"bug", b"junk", b"ok"):
            await lanes.submit(ControlItem("dev-1", "status", payload, 0))
        async with asyncio.timeout(10):
            while not handler.handled:  # noqa: ASYNC110  # a list the handler fills
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert handler.handled == [b"ok"]
    assert counters["status.error"] == 1 and counters["status.rejected.malformed"] == 1
    assert "the handler failed" in caplog.text and "TypeError" in caplog.text
