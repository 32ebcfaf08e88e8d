"""The orchestrator as its own process (``fedmq orchestrator run``), as crash and chaos tests
run it: started with its stderr in a log, ready once it prints ``ready``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

Process = asyncio.subprocess.Process


async def start_service(config: Path, log: Path) -> Process:
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fedmq.cli", "orchestrator", "run", "--config", str(config),
            "--log-level", "warning", stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def wait_ready(proc: Process, log: Path, within: float = 60) -> None:
    """Until the service says it is connected and serving (its first stdout line)."""
    assert proc.stdout is not None
    async with asyncio.timeout(within):
        line = await proc.stdout.readline()
    assert b"ready" in line, tail(log)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@contextlib.asynccontextmanager
async def service(config: Path, log: Path, *, clean_exit: bool = False
                  ) -> AsyncIterator[Process]:
    """The service process for the block; at its end a still running one is killed or, with
    ``clean_exit``, stopped with SIGTERM and must exit 0."""
    proc = await start_service(config, log)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate() if clean_exit else proc.kill()
        code = await proc.wait()
        if clean_exit:
            assert code == 0, tail(log)
