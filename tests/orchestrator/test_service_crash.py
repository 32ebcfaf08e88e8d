"""Exactly-once under SIGKILL: ``fedmq orchestrator run`` in a subprocess is killed at random
points while test devices stream updates (re-sending whatever is not acked, as agents do).

Afterwards, from the store alone: every acknowledged update is accepted exactly once (in one
version or still buffered), no (sender, seq) is accepted twice, the store's own invariants
hold, and every version equals its recomputation from the ledger (the deltas the devices sent,
weighted as the ledger says), bit for bit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.aggregation import weighted_mean
from orchestrator.broker import MosquittoBroker
from orchestrator.config import load_config
from orchestrator.devices.commands import provision
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import Store
from schemas import AckOutcome, Codec, CodecSpec, Params
from tests.support.service_config import config_file
from tests.support.service_process import service, wait_ready
from tests.support.sim_device import SimDevice

FLOAT32 = CodecSpec(Codec.FLOAT32)
DEVICES = 3


def _config_file(tmp_path: Path, broker: MosquittoBroker) -> Path:
    return config_file(tmp_path / "crash.toml", broker,
                       broker={"pid_file": str(broker.pid_file)},
                       aggregation={"k": 3, "staleness": "constant", "max_staleness": 100000})


class _Streamer:
    """One device's outbox: new updates while ``producing``, re-sends until acked."""

    def __init__(self, dev: Any, params: Params, rng: random.Random) -> None:
        self.dev = dev
        self.params = params
        self.rng = rng
        self.outbox: dict[int, bytes] = {}
        self.sent: dict[int, Params] = {}
        self.acked: set[int] = set()
        self.producing = True

    async def run(self) -> None:
        while True:
            for seq, entry in list(self.dev.acks.items()):
                if seq in self.outbox:
                    assert entry.outcome in (AckOutcome.ACCEPTED, AckOutcome.DUPLICATE), entry
                    self.acked.add(seq)
                    del self.outbox[seq]
            if self.producing and len(self.outbox) < 12:
                for _ in range(self.rng.randint(1, 3)):
                    delta = {k: np.asarray(
                        np.random.default_rng(self.rng.getrandbits(32)).standard_normal(v.shape)
                        * 0.01, np.float32) for k, v in self.params.items()}
                    seq, entry = self.dev.update(delta, base_version=0,
                                                 num_samples=self.rng.randint(1, 50),
                                                 codec=FLOAT32)
                    self.outbox[seq] = entry
                    self.sent[seq] = delta
            if self.outbox:
                await self.dev.send(*[self.outbox[s] for s in sorted(self.outbox)[:6]])
            await asyncio.sleep(self.rng.uniform(0.03, 0.12))


async def _crash_trials(tmp_path: Path, broker: MosquittoBroker, trials: int,
                        seed: int) -> None:
    rng = random.Random(seed)
    config_path = _config_file(tmp_path, broker)
    config = load_config(config_path)
    config.federation.data_dir.mkdir()
    key = load_or_create_key(config.federation.key_path)
    bundles = []
    async with Store.open(config.federation.store_path) as store:
        for i in range(DEVICES):
            bundles.append(await provision(store, config, f"dev-{i}",
                                           orchestrator_key=public_key_hex(key)))
    await broker.reload()
    log = tmp_path / "orchestrator.log"
    async with contextlib.AsyncExitStack() as stack:
        devs = [await stack.enter_async_context(SimDevice(b, broker)) for b in bundles]
        async with service(config_path, log) as proc:
            await wait_ready(proc, log)
            for dev in devs:
                await dev.enroll()
            async with Store.open(config.federation.store_path) as store:
                params = (await store.get_version(0)).params
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        streamers = [_Streamer(d, params, random.Random(rng.getrandbits(32))) for d in devs]
        tasks = [asyncio.create_task(s.run()) for s in streamers]
        try:
            kills = 0
            for trial in range(trials):
                async with service(config_path, log) as proc:
                    if trial % 3 == 2:  # sometimes mid start-up
                        await asyncio.sleep(rng.uniform(0.3, 1.5))
                    else:
                        await wait_ready(proc, log)
                        await asyncio.sleep(rng.uniform(0.1, 1.0))
                    if proc.returncode is None:
                        proc.kill()
                        kills += 1
            assert kills == trials, log.read_text()[-2000:]
            # a last, clean run: everything still unacknowledged goes through
            for s in streamers:
                s.producing = False
            async with service(config_path, log) as proc:
                await wait_ready(proc, log)
                for _ in range(300):
                    if not any(s.outbox for s in streamers):
                        break
                    await asyncio.sleep(0.1)
                assert not any(s.outbox for s in streamers), log.read_text()[-2000:]
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0, log.read_text()[-2000:]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    await _check_ledger(config.federation.store_path, streamers)


async def _check_ledger(path: Path, streamers: list[_Streamer]) -> None:
    sent = {(s.dev.id, seq): d for s in streamers for seq, d in s.sent.items()}
    acked = {(s.dev.id, seq) for s in streamers for seq in s.acked}
    assert len(acked) > 30
    async with Store.open(path) as store:
        assert await store.integrity_check() == []
        rows = await store.ledger(status=("buffered", "applied"))
        keys = [(r.sender, r.seq) for r in rows]
        assert len(keys) == len(set(keys)), "an update was accepted twice"
        assert acked <= set(keys), "an acknowledged update is missing"
        assert not await store.ledger(status="rejected")
        versions = await store.list_versions()
        assert len(versions) > 10
        params = (await store.get_version(0)).params
        applied_total = 0
        for info in versions[1:]:
            used = sorted((r for r in rows if r.applied_version == info.version),
                          key=lambda r: r.id)
            assert sorted(info.lineage["updates"]) == [r.id for r in used]
            assert [r.weight for r in used] == [float(r.num_samples) for r in used]
            mean = weighted_mean([sent[(r.sender, r.seq)] for r in used],
                                 [r.weight for r in used])
            params = {k: v + np.float32(1.0) * mean[k] for k, v in params.items()}
            stored = (await store.get_version(info.version)).params
            for name, value in stored.items():
                assert value.tobytes() == params[name].tobytes(), f"v{info.version} {name}"
            applied_total += len(used)
        buffered = [r for r in rows if r.status == "buffered"]
        assert applied_total + len(buffered) == len(rows)


async def test_sigkill_during_ingestion_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, broker: MosquittoBroker,
) -> None:
    await _crash_trials(tmp_path, broker, trials=10, seed=1)


@pytest.mark.slow
async def test_sigkill_many_times(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _crash_trials(tmp_path, broker, trials=40, seed=2)
