"""A test that starts a Mosquitto without the ``integration`` marker fails: a check, not a habit.

At configure time a ``mosquitto`` shim is put first on ``PATH``. It appends the id of the test
running now (``FEDMQ_TEST_ID``, set around each test) to a log, then execs the real broker, so
the process is the broker itself (same pid, same command line). ``find_mosquitto`` finds the
shim, hence so do the ``broker`` fixture, an embedded broker, the demo and every subprocess that
inherits the environment. After a test's teardown, the test fails if it appears in the log
without the marker (tests/conftest.py wires the hooks).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from orchestrator.broker import BrokerError, find_mosquitto

TEST_ID = "FEDMQ_TEST_ID"
LOG = "FEDMQ_TEST_BROKER_LOG"
MARKER = "integration"
_LOG_PATH = pytest.StashKey[Path]()

_SHIM = """#!/bin/sh
if [ -n "${FEDMQ_TEST_ID:-}" ] && [ -n "${FEDMQ_TEST_BROKER_LOG:-}" ]; then
  printf '%s\\n' "$FEDMQ_TEST_ID" >> "$FEDMQ_TEST_BROKER_LOG"
fi
exec REAL "$@"
"""


class GuardedItem(Protocol):
    """What the guard reads of a ``pytest.Item``."""

    @property
    def nodeid(self) -> str: ...

    @property
    def config(self) -> pytest.Config: ...

    def get_closest_marker(self, name: str) -> Any: ...


def install(config: pytest.Config) -> None:
    """Put the shim first on ``PATH`` for this session (undone at the end)."""
    try:
        real = find_mosquitto()
    except BrokerError:
        return  # the tests that need a broker fail with the install hint
    folder = Path(tempfile.mkdtemp(prefix="fedmq-broker-guard-"))
    shim = folder / "mosquitto"
    shim.write_text(_SHIM.replace("REAL", shlex.quote(real)))
    shim.chmod(0o755)
    log = folder / "started"
    log.touch()
    saved = {name: os.environ.get(name) for name in ("PATH", LOG)}
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ[LOG] = str(log)
    config.stash[_LOG_PATH] = log

    def undo() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)

    config.add_cleanup(undo)


@contextlib.contextmanager
def watching(item: GuardedItem) -> Iterator[None]:
    """Brokers started meanwhile (in this process or a child) are logged as ``item``'s."""
    before = os.environ.get(TEST_ID)
    os.environ[TEST_ID] = item.nodeid
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TEST_ID, None)
        else:
            os.environ[TEST_ID] = before


def unmarked_start(item: GuardedItem) -> str | None:
    """Why ``item`` must fail: it started a broker but is not marked; else ``None``."""
    log = item.config.stash.get(_LOG_PATH, None)
    if log is None or item.get_closest_marker(MARKER) is not None:
        return None
    if item.nodeid not in log.read_text().splitlines():
        return None
    return (f"{item.nodeid} started a Mosquitto but is not marked {MARKER!r}: use the broker "
            f"fixture, or mark it @pytest.mark.{MARKER} (see tests/conftest.py)")


def check(item: GuardedItem, report: pytest.TestReport) -> None:
    """Turn ``item``'s teardown ``report`` into a failure if :func:`unmarked_start` says so."""
    reason = unmarked_start(item)
    if reason is not None and report.outcome != "failed":
        report.outcome = "failed"
        report.longrepr = reason
