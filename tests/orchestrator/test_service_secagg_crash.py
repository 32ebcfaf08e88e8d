"""Secure buckets under SIGKILL: ``fedmq orchestrator run`` in a subprocess is killed at random
points while real agents work through buckets. Afterwards, from the store alone: every bucket
that ended is counted once (one ledger row per done bucket, none for an abandoned one), no
masked input outlives its bucket, the store's invariants hold, and the agents were left with
nothing to send and no bucket open."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
from pathlib import Path

from orchestrator.broker import MosquittoBroker
from orchestrator.config import load_config
from orchestrator.devices.commands import provision
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import Store
from tests.support.agents import FAST, new_agent, random_data
from tests.support.service_config import config_file
from tests.support.service_process import service, tail, wait_ready
from tests.support.waiting import until

AGENT = dataclasses.replace(FAST, heartbeat_s=0.2)
MEMBERS = 4
VERSIONS = 8


async def test_sigkill_mid_bucket_loses_nothing_and_counts_no_bucket_twice(
    tmp_path: Path, broker: MosquittoBroker,
) -> None:
    rng = random.Random(5)
    path = config_file(tmp_path / "secagg.toml", broker, broker={"pid_file": str(broker.pid_file)},
                       aggregation={"k": 1, "max_staleness": 100},
                       selection={"concurrency": MEMBERS, "retry_after_s": 0.2},
                       secure_aggregation={"enabled": True, "bucket_size": MEMBERS,
                                           "key_timeout_s": 30, "deadline_s": 60,
                                           "unmask_timeout_s": 60, "form_timeout_s": 30},
                       stopping={"max_versions": VERSIONS})
    config = load_config(path)
    config.federation.data_dir.mkdir()
    key = load_or_create_key(config.federation.key_path)
    async with Store.open(config.federation.store_path) as store:
        bundles = [await provision(store, config, f"dev-{i}",
                                   orchestrator_key=public_key_hex(key)) for i in range(MEMBERS)]
    await broker.reload()
    log = tmp_path / "orchestrator.log"
    agents = [new_agent(b, random_data(i), tmp_path / f"a{i}.db", AGENT)
              for i, b in enumerate(bundles)]
    for agent in agents:
        await agent.__aenter__()
    try:
        for _ in range(6):
            async with service(path, log) as proc:
                await wait_ready(proc, log)
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                proc.send_signal(signal.SIGKILL)
        async with service(path, log, clean_exit=True) as proc:
            await wait_ready(proc, log)
            # the buckets open at the last kill finish, and the federation makes its versions

            async def settled() -> bool:
                async with Store.open(config.federation.store_path) as s:
                    latest = await s.latest_version()
                    phases = await s.bucket_phases()
                return (latest is not None and latest.version >= VERSIONS
                        and all(phases.get(p, 0) == 0 for p in ("keys", "inputs", "unmask")))

            async with asyncio.timeout(90):
                while not await settled():  # noqa: ASYNC110  # store rows, no event
                    await asyncio.sleep(0.3)
            await until(lambda: all(len(a.outbox) == 0 and not a.buckets for a in agents), 30)
            done_agents = list(agents)
            for agent in agents:
                await agent.__aexit__(None, None, None)
            agents = []
            proc.send_signal(signal.SIGTERM)
    finally:
        for agent in agents:
            await agent.__aexit__(None, None, None)
    async with Store.open(config.federation.store_path) as store:
        assert await store.integrity_check() == []
        rows = await store.ledger(status=("buffered", "applied"))
        senders = [r.sender for r in rows]
        assert all(s is not None and s.startswith("bucket:") for s in senders)
        assert len(senders) == len(set(senders)), "a bucket was counted twice"
        done = {a.detail["bucket"] for a in await store.list_audit(event="secagg_done")}
        assert {f"bucket:{b}" for b in done} == set(senders), tail(log)
        assert len(done) >= VERSIONS
        abandoned = await store.list_audit(event="secagg_abandoned")
        assert not done & {a.detail["bucket"] for a in abandoned}
        assert not await store.open_buckets()
        assert not any(a.buckets for a in done_agents), "an agent still holds a bucket"
