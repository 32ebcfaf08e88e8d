"""``run_to_end``: a durable write and its bookkeeping are not split by a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.shared import run_to_end


async def test_a_cancelled_caller_waits_for_the_write_and_its_count_then_is_cancelled() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    counted: list[int] = []

    async def write_and_count() -> int:
        started.set()
        await release.wait()  # the COMMIT, still running on the database thread
        counted.append(1)
        return 7

    caller = asyncio.create_task(run_to_end(write_and_count()))
    await started.wait()
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done(), "the caller gave up before the write ended"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert counted == [1]


async def test_without_a_cancellation_the_result_and_errors_pass_through() -> None:
    async def value() -> str:
        return "ok"

    async def failing() -> None:
        raise ValueError("oversized")

    assert await run_to_end(value()) == "ok"
    with pytest.raises(ValueError, match="oversized"):
        await run_to_end(failing())
