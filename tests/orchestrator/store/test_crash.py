"""SIGKILL the process that owns the store while it ingests and commits in a loop: whatever
it had acknowledged survives, and the database is always consistent (all of a transaction or
none of it)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from orchestrator.store import Store

_WORKER = """
import asyncio, sys
import numpy as np
from orchestrator.store import IncomingUpdate, Store

async def main(path):
    async with Store.open(path) as store:
        latest = await store.latest_version()
        if latest is None:
            await store.add_device("dev", secret=b"s", status="active")
            arch = await store.put_architecture(b"arch")
            latest = await store.commit_version(
                params={"w": np.zeros(512, np.float32)}, kind="initial", parent=None,
                arch_hash=arch)
        seq = max((e.seq for e in await store.ledger(sender="dev")), default=-1) + 1
        version = latest.version
        while True:
            batch = [IncomingUpdate.accepted("dev", seq + i, version, 10,
                                             {"w": np.full(512, seq + i, np.float32)})
                     for i in range(16)]
            await store.ingest(batch, {"dev": str(seq + 15).encode()})
            seq += 16
            print("acked", seq, flush=True)  # the ack would go out now
            buffered = await store.buffered()
            info = await store.commit_version(
                params={"w": np.full(512, version + 1, np.float32)}, kind="aggregate",
                parent=version, applied={b.update_id: 10.0 for b in buffered[:10]},
                server_state={"step": str(version + 1).encode()})
            version = info.version
            print("version", version, flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def _run_and_kill(path: Path, lines_before_kill: int) -> tuple[int, int]:
    """Run the worker until it printed ``lines_before_kill`` lines, SIGKILL it, and return
    the last acknowledged seq count and committed version it reported."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WORKER, str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    acked, version = 0, 0
    try:
        for _ in range(lines_before_kill):
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
            if not line:
                _, err = await proc.communicate()
                pytest.fail(f"worker died: {err.decode()[-2000:]}")
            kind, value = line.split()
            if kind == b"acked":
                acked = int(value)
            else:
                version = int(value)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = await proc.communicate()
    for line in rest.splitlines():  # printed before the kill landed
        kind, value = line.split()
        if kind == b"acked":
            acked = int(value)
        else:
            version = int(value)
    assert proc.returncode == -signal.SIGKILL
    return acked, version


async def _check(path: Path, acked: int, version: int) -> None:
    async with Store.open(path) as store:
        assert await store.integrity_check() == []
        latest = await store.latest_version()
        assert latest is not None and latest.version >= version
        accepted = await store.ledger(sender="dev", status=["buffered", "applied"])
        seqs = sorted(e.seq for e in accepted if e.seq is not None)
        # every acknowledged update is there, exactly once, with nothing in between missing
        assert seqs == list(range(len(seqs))) and len(seqs) >= acked
        # the replay window was saved with the batch that advanced it
        window = (await store.load_replay_windows()).get("dev")
        assert window is not None and int(window) == len(seqs) - 1
        # the optimizer state went with the version that produced it
        assert await store.get_server_state("step") == str(latest.version).encode()
        got = await store.get_version(latest.version)
        assert np.all(got.params["w"] == latest.version)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
async def test_sigkill_loses_no_acknowledged_update(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    for lines in (7, 30, 55):  # land the kill at different points, resuming each time
        acked, version = await _run_and_kill(path, lines)
        await _check(path, acked, version)
