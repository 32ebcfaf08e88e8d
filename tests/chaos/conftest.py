"""Fixtures for the chaos tests (the harness is :mod:`tests.support.chaos`), and the summary line.

``make chaos`` must end with ``N passed, M failed``: :func:`pytest_terminal_summary` counts it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.broker import MosquittoBroker
from tests.support.chaos import ChaosSite

_SUMMARY = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """Count the chaos run's results; :func:`pytest_unconfigure` prints them last."""
    if config.getoption("markexpr", "") != "chaos":
        return
    stats = terminalreporter.stats
    passed = len([r for r in stats.get("passed", []) if r.when == "call"])
    failed = len(stats.get("failed", [])) + len(stats.get("error", []))
    config.stash[_SUMMARY] = f"{passed} passed, {failed} failed"


def pytest_unconfigure(config: Any) -> None:
    """``make chaos`` ends with one ``N passed, M failed`` line (pytest omits ``0 failed``)."""
    line = config.stash.get(_SUMMARY, None)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if line is not None and reporter is not None:
        reporter.write_line(line)


@pytest.fixture
async def chaos_site(tmp_path: Path, broker: MosquittoBroker
                     ) -> AsyncIterator[Callable[..., Awaitable[ChaosSite]]]:
    """``site = await chaos_site(devices=4, seed=0)``: a :class:`ChaosSite`, torn down (every
    process killed) at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:
        counter = iter(range(1000))

        async def make(*, devices: int = 4, seed: int = 0) -> ChaosSite:
            root = tmp_path / f"site-{next(counter)}"
            root.mkdir()
            return await stack.enter_async_context(ChaosSite(root, broker, devices, seed))

        yield make
