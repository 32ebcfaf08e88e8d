"""The version head: its followers are woken by every change, waiters by what they wait for."""

from __future__ import annotations

import asyncio

import numpy as np

from orchestrator.versions.head import ModelVersion, VersionHead


def _model(version: int) -> ModelVersion:
    return ModelVersion(version, {"w": np.full(2, version, np.float32)}, "arch", 0,
                        version - 1 if version else None)


async def test_followers_see_every_change_and_start_with_the_current_state() -> None:
    head = VersionHead(_model(0))
    follower = head.watch()
    assert follower.is_set()  # act on the current state first
    follower.clear()
    await head.advance(_model(1))
    assert follower.is_set() and head.version == 1 and head.shapes == {"w": (2,)}
    follower.clear()
    await head.mark_published(1, head.current.params)
    assert follower.is_set() and head.published_version == 1
    follower.clear()
    await head.mark_stopped("max_versions: reached version 1")
    assert follower.is_set() and head.stopped is not None


async def test_waiters_wake_when_their_condition_holds() -> None:
    head = VersionHead(_model(0))
    waiter = asyncio.create_task(head.wait_until(lambda h: h.published_version == 2))
    await head.advance(_model(1))
    await head.mark_published(1, head.current.params)
    await asyncio.sleep(0)
    assert not waiter.done()  # published 1 of 2; the task is blocked on the condition
    await head.advance(_model(2))
    await head.mark_published(2, head.current.params)
    async with asyncio.timeout(5):
        await waiter
