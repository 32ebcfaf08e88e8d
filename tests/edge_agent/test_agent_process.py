"""kill -9 of a real agent process mid-flush: the outbox and the seq counter survive."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import msgpack

from orchestrator.models import BuiltModel
from schemas import AgentState
from tests.support.fake_orchestrator import FakeOrchestrator
from tests.support.paths import REPO


async def _spawn(bundle: Path, data: Path, state: Path, log: Path) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge_agent", "run", "--bundle", str(bundle), "--data",
            str(data), "--state", str(state), "--ack-timeout", "0.5", "--heartbeat", "0.3",
            "--seed", "1", "--log-level", "DEBUG", "--probe", "simulated",
            stdout=out, stderr=out, env=env, cwd=REPO)


def _read_state(path: Path) -> tuple[dict[int, bytes], int]:
    with sqlite3.connect(path) as db:
        outbox = {int(s): bytes(e) for s, e in db.execute("SELECT seq, envelope FROM outbox")}
        (raw,) = db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
    return outbox, int(msgpack.unpackb(raw))


async def test_kill_9_mid_flush_keeps_outbox_and_seq(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard_path: Path, tmp_path: Path,
) -> None:
    orch = orchestrator
    orch.ack_updates = False  # updates arrive but are never acknowledged: a flush in progress
    bundle = await orch.add_device("dev-kill")
    bundle_path = tmp_path / "bundle.json"
    bundle_path.write_text(bundle.to_json())
    state, log = tmp_path / "agent.db", tmp_path / "agent.log"
    await orch.publish_model(built_model)

    proc = await _spawn(bundle_path, shard_path, state, log)
    try:
        await orch.wait_until(
            lambda: any(s.model_version == 1 for s in orch.statuses_of("dev-kill")), 15)
        for _ in range(3):
            await orch.send_task("dev-kill", epochs=1)
        # all three were sent (some more than once, being unacked) but none acknowledged
        await orch.wait_until(lambda: len(orch.updates) == 3, 15)
        await orch.wait_until(lambda: len(orch.batches) >= 4, 15)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # the broker publishes the pre-signed Last Will of the killed process
    await orch.wait_until(lambda: orch.statuses_of("dev-kill")[-1].state is AgentState.OFFLINE)
    assert orch.statuses_of("dev-kill")[-1].reason == "connection_lost"

    outbox, seq_after_kill = await asyncio.to_thread(_read_state, state)
    sent = {u.header.seq: u.raw for u in orch.updates}
    assert outbox == sent  # every unacked update is on disk, byte for byte
    seen_before = max(h.seq for _, h, _ in orch.statuses) if orch.statuses else 0
    assert seq_after_kill >= max(max(sent), seen_before)

    orch.ack_updates = True
    statuses_before = len(orch.statuses)
    proc = await _spawn(bundle_path, shard_path, state, log)
    try:
        await orch.wait_until(lambda: len(orch.accepted) == 3, 15)
        await orch.wait_until(
            lambda: any(s.outbox_len == 0 for _, _, s in orch.statuses[statuses_before:]), 15)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)
    assert rc == 0, log.read_text()[-3000:]

    restarted = [h.seq for _, h, _ in orch.statuses[statuses_before:]]
    assert restarted and min(restarted) > seq_after_kill  # no seq handed out twice
    assert orch.enrolls == 1  # enrollment was persisted too
    assert sorted(seq for _, seq in orch.accepted) == sorted(sent)
    outbox, _ = await asyncio.to_thread(_read_state, state)
    assert outbox == {}
    assert "Traceback" not in log.read_text()
