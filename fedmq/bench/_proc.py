"""Child processes of the benchmarks: the service (``fedmq orchestrator run``) and helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from fedmq.bench import BenchError
from orchestrator.broker import BrokerError

__all__ = ["STEP_S", "child", "expect_ready", "in_workdir", "service", "stop", "tail"]

STEP_S = 120.0
"""The longest any one step (start, stop, a reply) may take."""


def service(config: Path, log: Path) -> contextlib.AbstractAsyncContextManager[
        asyncio.subprocess.Process]:
    """``fedmq orchestrator run`` on ``config`` as a child; its stderr to ``log``."""
    return child(log, "-m", "fedmq.cli", "orchestrator", "run", "--config", str(config),
                 "--log-level", "warning")


@contextlib.asynccontextmanager
async def child(log: Path, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A Python child with piped stdin/stdout and stderr to ``log``, killed on exit."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def expect_ready(proc: asyncio.subprocess.Process, log: Path) -> None:
    """Wait for the service's ``ready`` line."""
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(STEP_S):
            line = await proc.stdout.readline()
    except TimeoutError:
        raise BenchError(f"the service did not start: {tail(log)}") from None
    if b"ready" not in line:
        raise BenchError(f"the service did not start: {tail(log)}")


async def stop(proc: asyncio.subprocess.Process, log: Path) -> None:
    """SIGTERM the service and expect a clean exit."""
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(STEP_S):
        code = await proc.wait()
    if code != 0:
        raise BenchError(f"the service exited with {code}: {tail(log)}")


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " / ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def in_workdir(keep: Path | None, prefix: str,
               bench: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run ``bench(workdir)`` in ``keep`` (kept afterwards) or a temporary directory; a
    broker failure is a :class:`BenchError`."""
    try:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            return asyncio.run(bench(keep.resolve()))
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return asyncio.run(bench(Path(tmp)))
    except BrokerError as exc:
        raise BenchError(f"the broker failed: {exc}") from exc
