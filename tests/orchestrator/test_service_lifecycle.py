"""The service's lifecycle: restart recovery, the shutdown path, fatal errors, cancellation,
and the embedded broker (credentials kept across starts, a stale broker replaced)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.broker import MosquittoBroker, pick_free_port
from orchestrator.config import Config, parse_config
from orchestrator.devices.commands import provision
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.service import Orchestrator, OrchestratorError
from orchestrator.store import Store, StoreError
from schemas import AckOutcome, EnrollStatus
from tests.support.service_config import FED, MODEL
from tests.support.sim_device import SimDevice, random_delta


async def test_restart_restores_buffer_windows_and_seqs_and_republishes(
    make_config: Callable[..., Config], devices: Callable[..., Any],
    broker: MosquittoBroker,
) -> None:
    config = make_config(aggregation={"k": 2})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        dev = await devices(orch, "dev")
        seq, update = dev.update(random_delta(orch.params))
        await dev.send(update)
        await dev.wait_acks([seq])
        assert orch.buffered == 1
    seqs_before = list(dev.down_seqs)
    # the retained model is cleared, as if the broker lost it: the restart republishes
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        assert orch.buffered == 1 and orch.version == 0
        dev.acks.clear()
        await dev.send(update)  # re-sent after the restart: a duplicate, not a second update
        assert (await dev.wait_acks([seq]))[seq].outcome is AckOutcome.DUPLICATE
        assert orch.buffered == 1
        seq2, update2 = dev.update(random_delta(orch.params, seed=1))
        await dev.send(update2)
        await dev.wait_acks([seq2])
        async with asyncio.timeout(10):
            await orch.wait_for_version(1, published=True)
        applied = await orch.store.ledger(applied_version=1)
        assert sorted(r.seq for r in applied) == [seq, seq2]
    # the orchestrator never reused a seq towards the device across the restart
    assert min(dev.down_seqs[len(seqs_before):]) > max(seqs_before)
    assert len(set(dev.down_seqs)) == len(dev.down_seqs)


async def test_shutdown_event_ends_the_service(make_config: Callable[..., Config]) -> None:
    shutdown = asyncio.Event()
    async with Orchestrator(make_config(), shutdown=shutdown,
                            store_synchronous="NORMAL") as orch:
        waiter = asyncio.create_task(orch.wait_closed())
        async with asyncio.timeout(20):  # the service is at work: version 0 went out
            await orch.wait_for_version(0, published=True)
        assert not waiter.done()
        shutdown.set()
        async with asyncio.timeout(20):
            await waiter
    with pytest.raises(OrchestratorError):
        _ = orch.store


async def test_a_fatal_error_in_a_task_stops_the_service_and_is_raised(
    make_config: Callable[..., Config], devices: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> list[int]:
        raise StoreError("disk on fire")

    with pytest.raises(ExceptionGroup) as caught:
        async with Orchestrator(make_config(), store_synchronous="NORMAL") as orch:
            dev = await devices(orch, "dev")
            monkeypatch.setattr(orch.store, "ingest", broken)
            _, update = dev.update(random_delta(orch.params))
            await dev.send(update)
            async with asyncio.timeout(20):
                await orch.wait_closed()
    assert caught.group_contains(StoreError)
    assert dev.acks == {}  # nothing was committed, so nothing was acknowledged


async def test_cancelling_the_owner_task_cleans_up(make_config: Callable[..., Config]) -> None:
    entered = asyncio.Event()
    holder: list[Orchestrator] = []

    async def run() -> None:
        async with Orchestrator(make_config(), store_synchronous="NORMAL") as orch:
            holder.append(orch)
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(run())
    async with asyncio.timeout(10):
        await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(20):
            await task
    with pytest.raises(OrchestratorError):
        _ = holder[0].store


@pytest.mark.integration  # an embedded broker, and a stale one started by hand
async def test_embedded_broker_keeps_credentials_and_replaces_a_stale_broker(
    tmp_path: Path,
) -> None:
    port = pick_free_port()
    data = tmp_path / "data"
    config = parse_config({
        "federation": {"id": FED, "data_dir": str(data)},
        "broker": {"port": port}, "model": MODEL,
    }, base_dir=tmp_path)
    # a device added before the service ever ran (as `fedmq device add` does)
    data.mkdir()
    key = load_or_create_key(config.federation.key_path)
    async with Store.open(config.federation.store_path) as store:
        bundle = await provision(store, config, "early", orchestrator_key=public_key_hex(key))
    # a broker left behind by a killed orchestrator holds the port
    stale = MosquittoBroker(config.federation.broker_dir, port=port)
    await stale.start()
    try:
        async with Orchestrator(config, store_synchronous="NORMAL") as orch:
            assert orch.broker is not None and orch.broker.port == port
            assert not stale.running
            assert "early:" in orch.broker.password_file.read_text()
            async with SimDevice(bundle, orch.broker) as dev:
                assert (await dev.enroll()).status is EnrollStatus.ACTIVE
    finally:
        await stale.stop()
