"""Keeping the agent's loops alive: a loop that fails is logged and restarted after a pause.

One bad moment (a full disk, a bug on odd input) must not take a device offline for good;
a full disk is an operator's problem, reported as one clear line rather than a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .clock import Clock
from .errors import storage_full

__all__ = ["LOOP_ERROR_PAUSE_S", "keep_running"]

LOOP_ERROR_PAUSE_S = 1.0


async def keep_running(name: str, loop: Callable[[], Awaitable[None]], *, clock: Clock,
                       logger: logging.Logger, pause_s: float = LOOP_ERROR_PAUSE_S) -> None:
    """Run ``loop`` until it returns or is cancelled, restarting it ``pause_s`` (on ``clock``)
    after each unexpected error."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if storage_full(exc):
                logger.error("%s: local storage is full (%s); nothing is lost, retrying in %ss",
                             name, exc, pause_s)
            else:
                logger.exception("%s loop failed; restarting it", name)
            await clock.sleep(pause_s)
