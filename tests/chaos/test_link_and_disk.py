"""A partitioned agent and an agent whose outbox disk fills up, while the fleet trains.

Both run under the ``chaos`` marker (``make chaos``); the quick suite's kill test includes a
short partition.

Partition: one agent's link to the broker is cut (connections dropped, reconnects refused)
for minutes; the rest of the fleet keeps
making versions, and once the link heals the agent's updates arrive and the invariants hold.

Full disk: the agent's state directory is a small tmpfs (needs root to mount; skipped
otherwise). Filling it makes the agent's writes fail; the agent logs one clear line ("local
storage is full", with SQLite's "database or disk is full") instead of a traceback, no update
is lost, the state file stays intact, and once space is freed the agent carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.chaos import ChaosSite


async def _partition(site: ChaosSite, seconds: float) -> None:
    await site.start_orchestrator()
    await site.start_fleet()
    await site.wait(lambda: site.versions() >= 1, 90, "first version")
    device = site.ids[0]
    before = len([r for r in site.ledger_rows() if r[0] == device])
    site.links[0].cut()
    version_at_cut = site.versions()
    queued = 0
    for _ in range(int(seconds / 0.1)):
        queued = max(queued, len(site.outbox_seqs(0)))
        await asyncio.sleep(0.1)
    assert site.agent_alive(0), site.agent_log(0)[-3000:]
    # the rest of the fleet kept training without it
    assert site.versions() > version_at_cut
    partitioned = len([r for r in site.ledger_rows() if r[0] == device])
    site.links[0].heal()
    await site.wait(lambda: len([r for r in site.ledger_rows() if r[0] == device])
                    > partitioned, 120, "the healed agent's updates")
    await site.wait(site.settled, 120, "outboxes drained")
    for i in range(site.devices):
        await site.stop_agent(i)
    await site.stop_orchestrator()
    ledger = await site.check()
    print(f"partition {seconds}s: rows before {before}, during {partitioned - before}, "
          f"outbox peak {queued}; {ledger}")


@pytest.mark.chaos
async def test_partition_for_minutes(chaos_site: Callable[..., Awaitable[ChaosSite]]) -> None:
    await _partition(await chaos_site(devices=3, seed=4), seconds=150)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Write one file until the filesystem is full."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.chaos
async def test_full_outbox_disk_is_a_clear_error_and_no_corruption(
    chaos_site: Callable[..., Awaitable[ChaosSite]],
) -> None:
    site = await chaos_site(devices=2, seed=5)
    with _tmpfs(site.state_dir(0), "2m"):
        await site.start_orchestrator()
        await site.start_fleet()
        await site.wait(lambda: len(site.produced(0)) >= 1, 90, "agent 0's first update")
        filler = _fill(site.state_dir(0))
        produced = len(site.produced(0))
        # training goes on around the full disk until the agent's next write fails
        await site.wait(lambda: "local storage is full" in site.agent_log(0), 60,
                        "a disk-full error")
        assert "Traceback" not in site.agent_log(0)
        filler.unlink()
        if not site.agent_alive(0):
            await site.stop_agent(0)  # reap it
            await site.start_agent(0)
        await site.wait(lambda: len(site.produced(0)) > produced, 90, "agent 0 producing again")
        await site.wait(site.settled, 120, "outboxes drained")
        for i in range(site.devices):
            await site.stop_agent(i)
        await site.stop_orchestrator()
        ledger = await site.check()
        print(f"disk full: {ledger}")
